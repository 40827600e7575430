"""OpenRLHF's reward queries back into samples: shared by the /get_reward route and the OpenRLHF ``reward_func``.

OpenRLHF sends a reward model ``query`` (the rollout's prompt and response token ids decoded together, special
tokens included) and ``prompts`` (the prompt as the policy saw it: raw text, or already rendered with the
policy's chat template when the run applies one). The sample is recovered as follows:

1. The response is what follows the prompt in the query. When the prompt is not a prefix of the query (a decoder
   that writes a BOS before it, say), the response is what follows the prompt's first occurrence; a query that
   does not contain its prompt at all is refused (INVALID_ARGUMENT naming the query), never guessed at.
2. With a tokenizer (the service's own on /get_reward; the policy's, when given, in ``reward_func``):
   - a prompt that is exactly the tokenizer's chat rendering of one user turn is unwrapped to that turn's text, so
     the reward model renders the conversation with its own template instead of reading the policy's markup as
     the user's words;
   - the end of the assistant turn that rendering writes (e.g. ``<|im_end|>``) and trailing special tokens (EOS,
     padding) are cut from the response: they are the rollout's stop, not its content.
Without a tokenizer, or when the prompt is not such a rendering, prompt and response are used as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rewardline.services.errors import invalid_argument

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_SENTINEL = "\x00rewardline-turn\x00"


class QuerySplitter:
    """Splits OpenRLHF queries with what one tokenizer knows about its chat template and special tokens."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        self.specials: list[str] = []
        self.user_head = self.user_tail = self.turn_end = ""
        if tokenizer is None:
            return
        self.specials = sorted({t for t in tokenizer.all_special_tokens if t}, key=len, reverse=True)
        if getattr(tokenizer, "chat_template", None):
            try:
                self.user_head, self.user_tail = self._around(tokenizer, [{"role": "user", "content": _SENTINEL}], True)
                conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}]
                self.turn_end = self._around(tokenizer, conversation, False)[1].rstrip()
            except Exception:  # a template that cannot render these turns: no unwrapping, nothing lost
                self.user_head = self.user_tail = self.turn_end = ""

    @staticmethod
    def _around(
        tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation: bool
    ) -> tuple[str, str]:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        assert isinstance(text, str)
        head, found, tail = text.partition(_SENTINEL)
        if not found:
            raise ValueError("the chat template does not write a turn's content as given")
        return head, tail

    def unwrap_prompt(self, prompt: str) -> str:
        """The user's text, when ``prompt`` is exactly this template's rendering of one user turn."""
        head, tail = self.user_head, self.user_tail
        if head and prompt.startswith(head) and prompt.endswith(tail) and len(prompt) >= len(head) + len(tail):
            inner = prompt[len(head) : len(prompt) - len(tail)]
            if _SENTINEL not in inner:
                return inner
        return prompt

    def clean_response(self, response: str) -> str:
        """The response without the turn end and the special tokens the rollout stopped on."""
        if self.turn_end and response.endswith(self.turn_end):
            response = response[: len(response) - len(self.turn_end)]
        stripped = True
        while stripped:
            stripped = False
            for token in self.specials:
                if response.endswith(token):
                    response = response[: len(response) - len(token)]
                    stripped = True
        return response

    def split(self, query: str, prompt: str, index: int = 0) -> tuple[str, str]:
        """(prompt, response) for one query; INVALID_ARGUMENT when the query does not contain its prompt."""
        if query.startswith(prompt):
            response = query[len(prompt) :]
        else:
            at = query.find(prompt)
            if at < 0:
                raise invalid_argument(
                    f"query[{index}] does not contain prompts[{index}]: OpenRLHF's query is the prompt followed by the "
                    "response, so the response cannot be told apart"
                )
            response = query[at + len(prompt) :]
        return self.unwrap_prompt(prompt), self.clean_response(response)

    def split_all(self, queries: Sequence[str], prompts: Sequence[str]) -> list[tuple[str, str]]:
        if len(queries) != len(prompts):
            raise invalid_argument(f"query has {len(queries)} entries and prompts {len(prompts)}: they must pair up")
        return [self.split(q, p, i) for i, (q, p) in enumerate(zip(queries, prompts))]
