"""Small tasks that need no download, for the examples, the tests and the objective comparisons.

- `arithmetic`: multi-step arithmetic mod 10 with a wrong step injected at a known place, its
  word-level tokenizer and a small backbone built from a config.

Each needs the `transformers` extra; nothing here is imported by `import crm_kernels`.
"""
