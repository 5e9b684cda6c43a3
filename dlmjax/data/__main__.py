"""`python -m dlmjax.data {tokenize,train-tokenizer,info}`: sharded token stores.

    python -m dlmjax.data train-tokenizer files:'corpus/**/*.py' --vocab 4096 --out tok/
    python -m dlmjax.data tokenize files:'corpus/**/*.py' --tokenizer tok/ --out shards/
    python -m dlmjax.data info shards/
    python -m dlmjax.train configs/tiny.yaml data.corpus=store:shards/ data.tokenizer=bpe \\
        data.bpe_vocab_size=4096

SOURCE is a `data.corpus` spec (stdlib, files:GLOB, jsonl:PATH:FIELD, parquet:GLOB:FIELD,
tfds:DIR:SPLIT:FIELD, mix:W*SPEC|W*SPEC...; dlmjax/data/corpus.py). `tokenize` runs an
Apache Beam pipeline (dlmjax/data/prepare.py; the [beam] extra): on the local DirectRunner
with one process per core unless Beam flags after `--` name another runner, e.g.
`-- --runner=DataflowRunner --project=P --region=R --temp_location=gs://...`.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from dlmjax.errors import exit_on_user_error


def info(directory: str) -> str:
  """A few lines about the sharded store in `directory`: sizes, splits, the largest unique
  budget, and a histogram of document lengths."""
  from dlmjax.data import budget, shards

  store = shards.ShardedStore(directory)
  index = store.index
  lengths = store.doc_lengths
  lines = [
      f'{store.path}: {index["source"]!r}, tokenizer {index["tokenizer"]} '
      f'({store.vocab_size} ids)',
      f'  {store.num_docs} documents, {store.num_tokens} tokens, {len(index["shards"])} shards '
      f'({sum(1 for s in index["shards"] if s["docs"])} non-empty)',
      f'  validation: {int(store.is_val.sum())} documents, {int(lengths[store.is_val].sum())} '
      f'tokens (val_fraction {index["val_fraction"]})',
      f'  tokenizer split: {int(store.is_tokenizer.sum())} documents, never trained on',
      # For a mixture, the most it gives at its weights (dlmjax/data/budget.py).
      f'  largest unique budget: data.unique_tokens={budget.train_split(store, 0, 0).num_tokens}',
      '  document length (tokens, BOS and EOS included):',
  ]
  edges = 2 ** np.arange(0, int(np.ceil(np.log2(max(int(lengths.max()), 2)))) + 2)
  counts, _ = np.histogram(lengths, bins=edges)
  first, last = np.flatnonzero(counts)[[0, -1]]
  for lo, hi, n in zip(edges[first:last + 1], edges[first + 1:last + 2], counts[first:last + 1]):
    bar = '#' * int(round(40 * n / counts.max()))
    lines.append(f'    [{lo:>9}, {hi:>9}) {n:>9}  {bar}')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  beam_args = []
  if '--' in argv:
    cut = argv.index('--')
    argv, beam_args = argv[:cut], argv[cut + 1:]
  parser = argparse.ArgumentParser(prog='python -m dlmjax.data', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  t = sub.add_parser('tokenize', help='tokenize SOURCE into ArrayRecord shards (Apache Beam)')
  t.add_argument('source')
  t.add_argument('--out', required=True, help='the store directory to write')
  t.add_argument('--tokenizer', default=None,
                 help='a directory from train-tokenizer (default: bytes)')
  t.add_argument('--val-fraction', type=float, default=0.02)
  t.add_argument('--shards', type=int, default=0,
                 help='about how many shards (0: one per 256 documents, at most 1024)')
  t.add_argument('--workers', type=int, default=0,
                 help='DirectRunner processes (0: one per core)')
  k = sub.add_parser('train-tokenizer', help='train a byte-level BPE on the tokenizer split')
  k.add_argument('source')
  k.add_argument('--vocab', type=int, required=True)
  k.add_argument('--out', required=True)
  k.add_argument('--val-fraction', type=float, default=0.02)
  k.add_argument('--tokenizer-fraction', type=float, default=0.02)
  k.add_argument('--sample-docs', type=int, default=0,
                 help='train on a seeded sample of this many documents of the split (0: all)')
  k.add_argument('--seed', type=int, default=0)
  i = sub.add_parser('info', help='describe a sharded store')
  i.add_argument('directory')
  args = parser.parse_args(argv)
  with exit_on_user_error():
    from dlmjax.data import prepare

    if args.command == 'tokenize':
      prepare.tokenize(args.source, args.out, tokenizer_dir=args.tokenizer,
                       val_fraction=args.val_fraction, num_shards=args.shards,
                       workers=args.workers, beam_args=beam_args)
      if not prepare.is_remote(args.out):
        print(info(args.out))
    elif args.command == 'train-tokenizer':
      tok = prepare.train_tokenizer(args.source, args.out, vocab_size=args.vocab,
                                    val_fraction=args.val_fraction,
                                    tokenizer_fraction=args.tokenizer_fraction,
                                    sample_docs=args.sample_docs, seed=args.seed)
      print(f'{args.out}: byte-level BPE, {tok.vocab_size} ids')
    else:
      print(info(args.directory))


if __name__ == '__main__':
  main()
