"""Inputs go to the model's device (issue 10), checked without a GPU.

A stand-in model lives on PyTorch's "meta" device (shapes, no data): every tensor it receives must
already be there. The helpers then fail when they turn a meta result into a Python number, which is
expected; what is checked is that no input reached the model from the CPU (a CUDA model would
raise a device mismatch on such an input).
"""

from types import SimpleNamespace

import pytest
import torch

from labkit.alignment import completion_logprob
from labkit.evaluate import answer_loss
from labkit.probe import general_probe, load_probe, mean_kl

RECORD = {"prompt": "### Instruction:\nSay hi.\n\n### Response:\n", "completion": "hi"}


class MetaModel(torch.nn.Module):
    """Looks like a causal LM on the meta device; records the device of every tensor it is given."""

    def __init__(self, vocab: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, device="meta"))
        self.vocab, self.seen = vocab, []
        self.embed = torch.nn.Embedding(vocab, 4, device="meta")

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embed

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        self.seen += [t.device.type for t in (input_ids, attention_mask, labels, *kwargs.values())
                      if isinstance(t, torch.Tensor)]
        logits = torch.zeros(*input_ids.shape, self.vocab, device="meta")
        return SimpleNamespace(logits=logits, loss=logits.sum())


@pytest.mark.parametrize("call", [
    lambda m, tok: answer_loss(m, tok, [RECORD]),
    lambda m, tok: completion_logprob(m, tok, RECORD["prompt"], RECORD["completion"]),
    lambda m, tok: mean_kl(m, m, tok, prompts=["The sky is blue."]),
    lambda m, tok: general_probe(m, tok, items=load_probe()[:2]),
], ids=["answer_loss", "completion_logprob", "mean_kl", "general_probe"])
def test_every_input_is_sent_to_the_models_device(tiny, call):
    _, tok = tiny
    model = MetaModel(len(tok))
    with pytest.raises((RuntimeError, NotImplementedError)):  # a meta result has no number to read
        call(model, tok)
    assert model.seen and set(model.seen) == {"meta"}, model.seen
