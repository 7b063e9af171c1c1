"""Evaluation: batched greedy generation, harmfulness judges and scores."""
