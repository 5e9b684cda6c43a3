"""Corpora, tokenizers, the token store, budgets and the grain pipeline.

    from dlmjax.data import budget, pipeline, store
    tokenizer, token_store = store.prepare_data(cfg.data)
    train = budget.train_split(token_store, cfg.data.unique_tokens, cfg.data.order_seed)
    data = pipeline.TrainData(train, seq_len=cfg.data.seq_len, global_batch=cfg.train.batch_size,
                              epochs=cfg.data.epochs, seed=cfg.seed, steps=cfg.train.steps,
                              prefetch=cfg.data.prefetch)
    val = pipeline.val_batches(budget.val_split(token_store), seq_len=cfg.data.seq_len,
                               batch_size=cfg.eval.batch_size, max_tokens=cfg.eval.val_tokens)

Modules are imported by name (nothing is re-exported here) so that importing the corpus or
tokenizer code does not pull in grain.
"""
