"""Data the lab builds: `datasets` (the embedded default corpus, a local corpus, FineWeb shards,
`inspect`), `tokenizer` (training a SentencePiece model) and `references` (unigram and bigram
bits per byte of the training tokens, printed beside a run's score).

Public face: those three modules; nothing is imported here, so `pgolf data` pays only for what it
uses.
"""
