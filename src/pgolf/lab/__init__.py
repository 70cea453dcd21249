"""The lab: every pgolf tool a submission never runs (data download and corpus building,
tokenizer training, budget what-ifs and plans, plots and reports, statistics, records export and
verification, the auditor and studies). It may import the core; the core never imports it."""
