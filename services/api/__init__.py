"""The generated gRPC stubs of proto/rewardline/v1 (regenerate with ``python -m services.api.generate``)."""

from services.api.rewardline.v1 import reward_pb2 as pb
from services.api.rewardline.v1 import reward_pb2_grpc as pb_grpc

REWARD_SERVICE = pb.DESCRIPTOR.services_by_name["RewardService"].full_name

__all__ = ["pb", "pb_grpc", "REWARD_SERVICE"]
