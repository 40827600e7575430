"""The contract's messages and stubs (``rewardline.v1``, generated from proto/), under the short names the
serving code uses."""

from rewardline.v1 import reward_pb2 as pb
from rewardline.v1 import reward_pb2_grpc as pb_grpc

REWARD_SERVICE = pb.DESCRIPTOR.services_by_name["RewardService"].full_name

__all__ = ["pb", "pb_grpc", "REWARD_SERVICE"]
