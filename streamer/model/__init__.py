"""The multi-task BERT model: training, tokenization, artifacts and the runtime loader."""
