"""Training: data sets and intent labels, the fine-tuning run, metrics, model card, tiny model.

Nothing in serving imports this package; `compile/` and `make model` do.
"""
