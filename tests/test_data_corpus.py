"""Document sources: order, names, empty documents, fingerprints and user errors."""

import json
import pathlib

import pytest

from dlmjax.data.corpus import Document, open_corpus
from dlmjax.errors import UserError


def test_files_corpus_is_recursive_sorted_and_named_relative_to_the_glob_root(tmp_path):
  (tmp_path / 'b' / 'c').mkdir(parents=True)
  (tmp_path / 'z.txt').write_text('zed')
  (tmp_path / 'b' / 'a.txt').write_text('aye')
  (tmp_path / 'b' / 'c' / 'd.txt').write_text('dee')
  (tmp_path / 'b' / 'skip.md').write_text('not matched')
  docs = list(open_corpus(f'files:{tmp_path}/**/*.txt').documents())
  assert docs == [Document('b/a.txt', 'aye'), Document('b/c/d.txt', 'dee'),
                  Document('z.txt', 'zed')]


def test_files_corpus_skips_empty_documents_and_replaces_invalid_utf8(tmp_path):
  (tmp_path / 'empty.txt').write_text('')
  (tmp_path / 'blank.txt').write_text('  \n\n')
  (tmp_path / 'bad.txt').write_bytes(b'ok \xff end')
  docs = list(open_corpus(f'files:{tmp_path}/*.txt').documents())
  assert docs == [Document('bad.txt', 'ok \ufffd end')]


def test_glob_matching_nothing_names_the_glob(tmp_path):
  with pytest.raises(UserError, match=r"glob '.*nothing-here/\*\.txt' matches no files"):
    open_corpus(f'files:{tmp_path}/nothing-here/*.txt')


@pytest.mark.parametrize('spec', ['wikipedia', 'files', 'jsonl:only-path', 'http://x'])
def test_unknown_or_malformed_spec_names_data_corpus(spec):
  with pytest.raises(UserError, match=r'data\.corpus='):
    open_corpus(spec)


def test_jsonl_corpus_yields_one_document_per_line_named_by_file_and_line(tmp_path):
  path = tmp_path / 'web.jsonl'
  lines = [{'text': 'first', 'id': 1}, {'text': ''}, {'text': 'third'}]
  path.write_text('\n'.join(json.dumps(x) for x in lines) + '\n\n')
  docs = list(open_corpus(f'jsonl:{path}:text').documents())
  assert docs == [Document('web.jsonl:1', 'first'), Document('web.jsonl:3', 'third')]


def test_jsonl_missing_file_names_the_file(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    open_corpus(f'jsonl:{tmp_path}/absent.jsonl:text')


@pytest.mark.parametrize('line, message', [
    ('{"text": "ok"', r'line 2 is not valid JSON'),
    ('{"body": "ok"}', r"line 2 has no field 'text'"),
    ('{"text": 3}', r"line 2 field 'text' is int, not a string"),
])
def test_jsonl_bad_line_error_names_file_and_line(tmp_path, line, message):
  path = tmp_path / 'data.jsonl'
  path.write_text('{"text": "fine"}\n' + line + '\n')
  with pytest.raises(UserError, match=r"data\.jsonl' " + message):
    list(open_corpus(f'jsonl:{path}:text').documents())


def test_fingerprint_is_stable_and_changes_with_content_or_names(tmp_path):
  (tmp_path / 'a.txt').write_text('alpha')
  (tmp_path / 'b.txt').write_text('beta')
  spec = f'files:{tmp_path}/*.txt'
  first = open_corpus(spec).fingerprint()
  assert open_corpus(spec).fingerprint() == first
  (tmp_path / 'b.txt').write_text('beta!')
  changed = open_corpus(spec).fingerprint()
  assert changed != first
  (tmp_path / 'b.txt').rename(tmp_path / 'c.txt')
  assert open_corpus(spec).fingerprint() not in (first, changed)


def test_fingerprint_does_not_depend_on_where_the_corpus_lies(tmp_path):
  for d in ('one', 'two'):
    (tmp_path / d).mkdir()
    (tmp_path / d / 'a.txt').write_text('same')
  assert (open_corpus(f'files:{tmp_path}/one/*.txt').fingerprint()
          == open_corpus(f'files:{tmp_path}/two/*.txt').fingerprint())


def test_stdlib_corpus_is_sorted_python_without_tests_or_site_packages():
  corpus = open_corpus('stdlib')
  names = corpus.names
  assert names == sorted(names) and len(names) > 300
  assert all(n.endswith('.py') for n in names)
  skip = {'test', 'tests', 'idle_test', 'site-packages', 'dist-packages'}
  assert not any(skip & set(pathlib.PurePosixPath(n).parts[:-1]) for n in names)
  assert 'os.py' in names and 'json/decoder.py' in names
  first = next(corpus.documents())
  assert first.name == names[0] and first.text
