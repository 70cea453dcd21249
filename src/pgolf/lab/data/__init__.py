"""Data the lab builds and checks: `datasets` (the embedded default corpus, a local corpus, the
shard writer, `inspect`), `fineweb` (the hub's exports, CaseOps shards from its document list),
`caseops` (the reversible case transform of PR #1855 and the byte sidecar),
`overlap` (exact and near-duplicate documents between train and validation, `pgolf data
overlap`), `tokenizer` (training a SentencePiece model) and `references` (unigram and bigram bits
per byte of the training tokens, printed beside a run's score).

Public face: those modules; nothing is imported here, so `pgolf data` pays only for what it
uses.
"""
