"""Presence, frequency and repetition penalties and logit biases, on the device, batched.

Only requests that ask for one of them hold state here: one row each in three tables of
vocabulary width (generated-token counts, prompt tokens seen, dense logit biases). A step
gathers the rows of its penalised requests with one `index_select` per table, shapes their
logits in one pass of tensor ops, and after sampling adds the sampled tokens to the counts
with one `index_put_`: no Python loop over tokens, and the host never reads the tables.

The definitions (the order is theirs too):
- repetition_penalty (CTRL, Keskar et al. 2019, as Hugging Face applies it): every token of
  the prompt or of the output so far has a positive logit divided by the penalty and a
  negative one multiplied by it;
- frequency and presence penalties (OpenAI): logit[t] -= frequency_penalty * count[t] +
  presence_penalty * (count[t] > 0), count[t] being how often t was generated;
- logit_bias: its value is added to its token's logit.
The logprobs reported stay those of the raw logits: only the sampling copy is shaped.
"""

from __future__ import annotations

import torch

from contract.sampling import SamplingParams
from worker.device_io import to_device

_MIN_ROWS = 8


class PenaltyTable:
    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.counts = torch.zeros(0, vocab_size, device=device)  # [rows, vocab] generated
        self.prompt_seen = torch.zeros(0, vocab_size, dtype=torch.bool, device=device)
        self.bias = torch.zeros(0, vocab_size, device=device)  # [rows, vocab]
        self._free: list[int] = []

    @property
    def num_rows(self) -> int:
        return self.counts.shape[0]

    @property
    def num_used(self) -> int:
        return self.num_rows - len(self._free)

    def add(self, token_ids: list[int], num_prompt_tokens: int, options: SamplingParams) -> int:
        """A row for a request whose known tokens are `token_ids` (the prompt, then any output
        generated before a preemption); returns its index."""
        if not self._free:
            self._grow()
        row = self._free.pop()
        ids = to_device(token_ids, torch.long, self.device)
        self.counts[row].zero_()
        output_ids = ids[num_prompt_tokens:]
        self.counts[row].index_add_(0, output_ids, torch.ones_like(output_ids, dtype=torch.float))
        self.prompt_seen[row].zero_()
        self.prompt_seen[row].index_fill_(0, ids[:num_prompt_tokens], True)
        self.bias[row].zero_()
        if options.logit_bias:
            bias_ids = to_device(list(options.logit_bias), torch.long, self.device)
            values = to_device(list(options.logit_bias.values()), torch.float32, self.device)
            self.bias[row].index_copy_(0, bias_ids, values)
        return row

    def release(self, row: int) -> None:
        self._free.append(row)

    def _grow(self) -> None:
        old = self.num_rows
        new = max(_MIN_ROWS, 2 * old)

        def grown(table: torch.Tensor) -> torch.Tensor:
            bigger = torch.zeros(new, self.vocab_size, dtype=table.dtype, device=self.device)
            bigger[:old] = table
            return bigger

        self.counts, self.prompt_seen, self.bias = map(
            grown, (self.counts, self.prompt_seen, self.bias)
        )
        self._free.extend(range(new - 1, old - 1, -1))  # the lowest row is taken first

    def apply(
        self,
        logits: torch.Tensor,  # [num_rows, vocab] float32, shaped in place
        logits_rows: list[int],  # rows of `logits` that belong to penalised requests
        table_rows: list[int],  # each one's row here
        options: list[SamplingParams],
    ) -> None:
        device = logits.device
        rows = to_device(logits_rows, torch.long, device)
        index = to_device(table_rows, torch.long, device)
        shaped = logits.index_select(0, rows)  # [n, vocab]
        counts = self.counts.index_select(0, index)
        generated = counts > 0
        if any(o.repetition_penalty != 1.0 for o in options):
            penalty = _column([o.repetition_penalty for o in options], device)
            seen = self.prompt_seen.index_select(0, index) | generated
            penalised = torch.where(shaped > 0, shaped / penalty, shaped * penalty)
            shaped = torch.where(seen, penalised, shaped)
        if any(o.frequency_penalty for o in options):
            shaped = shaped - counts * _column([o.frequency_penalty for o in options], device)
        if any(o.presence_penalty for o in options):
            presence = _column([o.presence_penalty for o in options], device)
            shaped = shaped - generated * presence
        if any(o.logit_bias for o in options):
            shaped = shaped + self.bias.index_select(0, index)
        logits.index_copy_(0, rows, shaped)

    def record(self, table_rows: list[int], sampled: torch.Tensor) -> None:
        """Count the tokens just sampled (`sampled` [n], on the device) for these rows."""
        index = to_device(table_rows, torch.long, sampled.device)
        ones = torch.ones(len(table_rows), device=sampled.device)
        self.counts.index_put_((index, sampled), ones, accumulate=True)


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return to_device(values, torch.float32, device)[:, None]  # [n, 1]
