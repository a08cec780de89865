#!/usr/bin/env node
// make_golden.js — golden token ids for fp4q's C++ tokenizer (tests/tokenizer/tokenizer_test.cpp).
//
// Produced with the npm package `tokenizers` version 0.23.2 (the Node binding of the Hugging Face
// Rust `tokenizers` library, native binary tokenizers.linux-x64-gnu.node), Node.js v20.
// Reproduce:
//   cd tools/golden_tokenizer && npm install && node make_golden.js
// (node_modules/ is not committed; package.json pins tokenizers 0.23.2.)
//
// What it writes, all under tests/data/tokenizer/:
//   bytelevel_llama3.tokenizer.json  byte-level BPE trained here on a few KB of data/text, with
//       pre_tokenizer Sequence[Split(Llama-3 regex, Isolated), ByteLevel(use_regex=false)],
//       ByteLevel decoder, Sequence[ByteLevel, TemplateProcessing(<|begin_of_text|> $A)]
//       post-processor, ignore_merges=true, merges stored as "a b" strings, special tokens only in
//       added_tokens (ids after the model vocab), like Meta-Llama-3.
//   bytelevel_gpt2.tokenizer.json    the same vocab/merges with GPT-2's ByteLevel(use_regex=true)
//       pre-tokenizer, merges stored as [a, b] pairs, ignore_merges=false, ByteLevel
//       post-processor (no BOS), <|endoftext|> inside the model vocab, like gpt2.
//   bytelevel_qwen2.tokenizer.json   the same vocab/merges with the Qwen2 Split regex (single
//       digits) and NFC normalizer, ByteLevel post-processor, <|im_start|>/<|im_end|> specials,
//       a special <mask> with lstrip/rstrip, and non-special added tokens "[NOTE]"
//       (normalized=true) and "sw" (single_word=true) to exercise the added-token options.
//   stories260K_metaspace.tokenizer.json  data/models/stories260K/tokenizer.json rewritten to the
//       newer SentencePiece conversion (normalizer null, Metaspace pre-tokenizer with
//       prepend_scheme "first", split false, Metaspace decoder), like Mistral / Llama-2 re-exports.
//   strings.json     {"strings": [...]}: the test strings (hand-written edge cases + WikiText-2 rows).
//   <name>.golden.json for each tokenizer (stories260K = data/models/stories260K/tokenizer.json):
//       {"tokenizer": path relative to the repo root,
//        "ids": [[...] per string]                       encode(s, add_special_tokens=true).ids,
//        "ids_nospecial": [[...] per string of the first kNoSpecial strings]  add_special_tokens=false,
//        "decoded": [null | string per string]          decode(ids, skip_special_tokens=false) where
//                                                        it differs from the input string,
//        "wikitext": {"count", "fnv1a64", "first", "last"}  the whole data/text/wikitext2-test.txt
//            encoded with add_special_tokens=true: id count, FNV-1a 64 over the ids as int32
//            little-endian bytes (offset basis 0xcbf29ce484222325, prime 0x100000001b3), written as
//            16 lowercase hex digits, and the first/last kEdge (stories260K) or kEdgeOther ids}.
//   stories260K_wssplit / _split / _whitespace.tokenizer.json  stories260K's BPE model behind the
//       other supported pre-tokenizers (WhitespaceSplit, Punctuation, Digits, Split with String /
//       Regex patterns and every behaviour incl. invert, Metaspace split=true, Whitespace) and
//       normalizers (Strip, Replace with a Regex, NFC).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { Tokenizer } = require('tokenizers');

const kRoot = path.resolve(__dirname, '..', '..');
const kOut = path.join(kRoot, 'tests', 'data', 'tokenizer');
const kWiki = path.join(kRoot, 'data', 'text', 'wikitext2-test.txt');
const kFrank = path.join(kRoot, 'data', 'text', 'calib-frankenstein.txt');
const kStories = path.join(kRoot, 'data', 'models', 'stories260K', 'tokenizer.json');
const kNoSpecial = 40;
const kEdge = 1000;      // first/last ids of WikiText-2 kept for stories260K
const kEdgeOther = 200;  // ... and for the other tokenizers
const kNumMerges = 240;  // 256 byte symbols + 240 merges = 496 model tokens

const LLAMA3_RE = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_RE = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the rest to U+0100 upwards.
function bytesToUnicodeOrder() {
  const bs = [];
  for (let b = 0x21; b <= 0x7e; ++b) bs.push(b);
  for (let b = 0xa1; b <= 0xac; ++b) bs.push(b);
  for (let b = 0xae; b <= 0xff; ++b) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; ++b) {
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); ++n; }
  }
  return cs.map((c) => String.fromCodePoint(c));  // in GPT-2 vocab order
}

// byte value -> its byte-level character.
function bytesToUnicodeTable() {
  const bs = [];
  for (let b = 0x21; b <= 0x7e; ++b) bs.push(b);
  for (let b = 0xa1; b <= 0xac; ++b) bs.push(b);
  for (let b = 0xae; b <= 0xff; ++b) bs.push(b);
  const chars = bytesToUnicodeOrder();
  const all = bs.slice();
  for (let b = 0; b < 256; ++b) if (!bs.includes(b)) all.push(b);
  const table = new Array(256);
  all.forEach((b, i) => { table[b] = chars[i]; });
  return table;
}

function byteLevelJson({ preTokenizer, postProcessor, decoder, vocab, merges, addedTokens, ignoreMerges, normalizer }) {
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: addedTokens || [],
    normalizer: normalizer || null,
    pre_tokenizer: preTokenizer,
    post_processor: postProcessor || null,
    decoder: decoder || null,
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
      end_of_word_suffix: null, fuse_unk: false, byte_fallback: false,
      ignore_merges: !!ignoreMerges, vocab, merges,
    },
  };
}

function added(id, content, special, opts = {}) {
  return {
    id, content, single_word: false, lstrip: !!opts.lstrip, rstrip: !!opts.rstrip,
    normalized: opts.normalized === undefined ? !special : opts.normalized, special,
  };
}

const llama3Split = { type: 'Split', pattern: { Regex: LLAMA3_RE }, behavior: 'Isolated', invert: false };
const qwen2Split = { type: 'Split', pattern: { Regex: QWEN2_RE }, behavior: 'Isolated', invert: false };
const byteLevelNoRegex = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false };
const byteLevelDecoder = { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true };
const byteLevelPost = { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true };

// Trains merges with the library's own BPE trainer (Tokenizer.train uses the model's default
// BpeTrainer; the Node binding exposes no trainer options), then keeps the first kNumMerges merges
// over the full 256-symbol byte alphabet. BPE training is greedy, so a prefix of the merge list is
// exactly what a smaller vocab_size would have produced (apart from the alphabet, which we fill up).
function trainByteLevel() {
  const text = fs.readFileSync(kFrank, 'utf8').slice(20000, 32000) + '\n' +
               fs.readFileSync(kWiki, 'utf8').slice(600000, 606000);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fp4q-golden-'));
  const trainFile = path.join(tmp, 'train.txt');
  fs.writeFileSync(trainFile, text);
  const init = byteLevelJson({
    preTokenizer: { type: 'Sequence', pretokenizers: [llama3Split, byteLevelNoRegex] },
    vocab: {}, merges: [],
  });
  const t = Tokenizer.fromString(JSON.stringify(init));
  t.train([trainFile]);
  const savedPath = path.join(tmp, 'trained.json');
  t.save(savedPath, false);
  const trained = JSON.parse(fs.readFileSync(savedPath, 'utf8'));
  fs.rmSync(tmp, { recursive: true, force: true });

  const vocab = {};
  let next = 0;
  for (const c of bytesToUnicodeOrder()) vocab[c] = next++;
  const merges = [];
  for (const m of trained.model.merges) {
    if (merges.length >= kNumMerges) break;
    const [a, b] = Array.isArray(m) ? m : m.split(' ');
    if (!(a in vocab) || !(b in vocab)) throw new Error(`merge ${a} ${b} has unknown parts`);
    const ab = a + b;
    if (!(ab in vocab)) vocab[ab] = next++;
    merges.push([a, b]);
  }
  return { vocab, merges, size: next };
}

function buildTokenizers() {
  const { vocab, merges, size } = trainByteLevel();
  const out = {};

  // Llama-3 style. A few whole words are added to the vocab without merges that build them, so
  // only ignore_merges=true produces them (Llama-3's vocab has many such tokens).
  {
    const v = Object.assign({}, vocab);
    let n = size;
    const table = bytesToUnicodeTable();
    for (const w of ['Hello', ' world', ' quantization', 'Once', ' Boulter', ' \u041f\u0440\u0438\u0432\u0435\u0442', ' the']) {
      const enc = Array.from(Buffer.from(w, 'utf8')).map((b) => table[b]).join('');
      if (!(enc in v)) v[enc] = n++;
    }
    const bot = n, eot = n + 1, eotId = n + 2;
    out.bytelevel_llama3 = byteLevelJson({
      preTokenizer: { type: 'Sequence', pretokenizers: [llama3Split, byteLevelNoRegex] },
      postProcessor: {
        type: 'Sequence', processors: [
          byteLevelPost,
          {
            type: 'TemplateProcessing',
            single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
            pair: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
                   { SpecialToken: { id: '<|begin_of_text|>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
            special_tokens: { '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [bot], tokens: ['<|begin_of_text|>'] } },
          },
        ],
      },
      decoder: byteLevelDecoder,
      vocab: v, merges: merges.map(([a, b]) => `${a} ${b}`),
      addedTokens: [added(bot, '<|begin_of_text|>', true), added(eot, '<|end_of_text|>', true),
                    added(eotId, '<|eot_id|>', true)],
      ignoreMerges: true,
    });
  }
  // GPT-2 style: the special token is also part of the model vocab.
  {
    const v = Object.assign({}, vocab);
    v['<|endoftext|>'] = size;
    out.bytelevel_gpt2 = byteLevelJson({
      preTokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
      postProcessor: byteLevelPost,
      decoder: byteLevelDecoder,
      vocab: v, merges,
      addedTokens: [added(size, '<|endoftext|>', true)],
      ignoreMerges: false,
    });
  }
  // Qwen2 style (NFC normalizer, single-digit regex) plus added-token options.
  {
    out.bytelevel_qwen2 = byteLevelJson({
      normalizer: { type: 'NFC' },
      preTokenizer: { type: 'Sequence', pretokenizers: [qwen2Split, byteLevelNoRegex] },
      postProcessor: byteLevelPost,
      decoder: byteLevelDecoder,
      vocab, merges,
      addedTokens: [added(size, '<|endoftext|>', true), added(size + 1, '<|im_start|>', true),
                    added(size + 2, '<|im_end|>', true),
                    added(size + 3, '[NOTE]', false),  // non-special, normalized=true
                    added(size + 4, '<mask>', true, { lstrip: true, rstrip: true }),
                    Object.assign(added(size + 5, 'sw', false, { normalized: false }), { single_word: true })],
      ignoreMerges: false,
    });
  }
  // stories260K with the Metaspace pre-tokenizer instead of the Prepend+Replace normalizer.
  {
    const j = JSON.parse(fs.readFileSync(kStories, 'utf8'));
    j.normalizer = null;
    j.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false };
    j.decoder = { type: 'Sequence', decoders: [
      { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false },
      { type: 'ByteFallback' }, { type: 'Fuse' }] };
    out.stories260K_metaspace = j;
  }
  // stories260K's model behind the remaining supported pre-tokenizers and normalizers.
  {
    const j = JSON.parse(fs.readFileSync(kStories, 'utf8'));
    j.normalizer = null;
    j.pre_tokenizer = { type: 'Sequence', pretokenizers: [
      { type: 'WhitespaceSplit' }, { type: 'Punctuation', behavior: 'Isolated' },
      { type: 'Digits', individual_digits: false }] };
    out.stories260K_wssplit = j;
  }
  {
    const j = JSON.parse(fs.readFileSync(kStories, 'utf8'));
    j.normalizer = { type: 'Sequence', normalizers: [
      { type: 'Strip', strip_left: true, strip_right: true },
      { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' }, { type: 'NFC' }] };
    j.pre_tokenizer = { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { String: '-' }, behavior: 'MergedWithPrevious', invert: false },
      { type: 'Split', pattern: { Regex: '[A-Z]' }, behavior: 'MergedWithNext', invert: false },
      { type: 'Split', pattern: { Regex: '\\d+' }, behavior: 'Contiguous', invert: true },
      { type: 'Split', pattern: { String: 'th' }, behavior: 'Removed', invert: false },
      { type: 'Digits', individual_digits: true },
      { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true }] };
    out.stories260K_split = j;
  }
  {
    const j = JSON.parse(fs.readFileSync(kStories, 'utf8'));
    j.normalizer = null;
    j.pre_tokenizer = { type: 'Whitespace' };
    out.stories260K_whitespace = j;
  }
  return out;
}

function testStrings() {
  const hand = [
    '', ' ', '  ', '\t', '\n', '\n\n', '\r\n', ' \n ', 'a', 'Hello', 'Hello world', ' Hello world',
    'Hello world ', '  leading two', 'trailing two  ', 'Hello   world', '   ', 'a  b   c    d',
    'tab\tseparated\tvalues', 'line1\nline2\n\nline4', 'mixed \t\n whitespace \n\t ', ' \t \n',
    'end with newline\n', '\n\nstarts with newlines', 'spaces before newline   \nnext',
    // Special tokens of the various tokenizers inside text.
    '<s>', '</s>', '<unk>', 'Hello <s> world', '<s><s>', 'a</s>b', '<s> leading', ' <s>', '<s>Hi',
    '<|endoftext|>', 'text<|endoftext|>more', '<|begin_of_text|>Hi', 'x<|eot_id|> y',
    '<|im_start|>user\nHi there<|im_end|>\n', '<0x41>', '<0xZZ>', '<s', 's>', '<|endoftext|',
    'a [NOTE] b', '[NOTE][NOTE]', 'x  <mask>  y', '<mask>', 'word<mask>word', ' <mask>\n',
    // Contractions and apostrophes.
    "I'm don't you'll we've she'd they're it's", "I'M DON'T YOU'LL WE'VE SHE'D THEY'RE IT'S",
    "'s 't 're 've 'm 'll 'd", "rock'n'roll", "O'Neil's", "''double apostrophe''", "dogs' toys",
    '\u2018curly\u2019 \u201cquotes\u201d', "it\u2019s", "'", "'s",
    // Numbers.
    '1', '12', '123', '1234', '12345', '12345678901234567890', '3.14159', '1,000,000', '2024-01-15',
    'version 1.2.3', '-42', '+7 (555) 123-4567', 'x1y22z333w4444', '\u0663\u0664\u0665 Arabic-Indic digits',
    '\u00bd \u00bc \u00b2 \u2167', '0x1F 0b1010 1e-9', '$1,234.56', '100%',
    // Unicode text.
    'caf\u00e9', 'na\u00efve fa\u00e7ade', 'Cr\u00e8me br\u00fbl\u00e9e', '\u00dcn\u00efc\u00f6d\u00e9',
    'e\u0301', 'cafe\u0301 (combining acute)', 'a\u0308\u0304 stacked marks', 'Zo\u00eb',
    '\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac', '\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!',
    '\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8', '\u4e2d\u6587\u5b57\u7b26\u6d4b\u8bd5',
    '\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8', '\u05e2\u05d1\u05e8\u05d9\u05ea', '\u0627\u0644\u0639\u0631\u0628\u064a\u0629',
    '\u0939\u093f\u0928\u094d\u0926\u0940', '\u0e44\u0e17\u0e22', 'Ti\u1ebfng Vi\u1ec7t',
    '\u00df \u1e9e \ufb01 ligature', '\ud835\udd18\ud835\udd2b\ud835\udd26 math letters',
    '\u00a0nbsp\u00a0', '\u2003em space', '\u3000ideographic space', 'zero\u200bwidth',
    '\u0085NEL\u0085', 'a\u2028line separator', '\ufeffBOM', 'soft\u00adhyphen',
    'Pok\u00e9mon \u2013 en dash \u2014 em dash', '\u00a9 \u00ae \u2122 \u00b0C \u20ac \u00a5 \u20b1',
    '\u2581already\u2581metaspace', '\u0120\u010a byte-level lookalikes',
    // Emoji.
    '\ud83d\ude00', '\ud83d\udc4d\ud83c\udffd', '\ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67\u200d\ud83d\udc66',
    '\ud83c\udff3\ufe0f\u200d\ud83c\udf08', '\u2764\ufe0f', '\ud83c\uddfa\ud83c\uddf8\ud83c\uddef\ud83c\uddf5',
    'emoji \ud83d\ude00 in text', '\ud83d\ude00\ud83d\ude00\ud83d\ude00', 'I \u2764 NY',
    // Punctuation, code, URLs.
    'Hello, world!', '...', '?!?!', 'a.b.c', '(parens) [brackets] {braces}', '#hashtag @mention',
    'email@example.com', 'https://example.com/path?q=1&r=2', 'C++ -> Rust => Go', 'x**2 + y**2 == z**2',
    '~`!@#$%^&*()_+-=', '\\backslash\\', '"double" \'single\'', ' @-@ @,@ @.@ ', '<html><body>x</body></html>',
    'def f(x):\n    return x + 1\n', 'int main() {\n\treturn 0;\n}\n', 'a\r\nb\rc', '----------',
    '!!!???', '  ...  ', '\u00bfQu\u00e9? \u00a1S\u00ed!',
    // Long / repetitive.
    'supercalifragilisticexpialidocious', 'pneumonoultramicroscopicsilicovolcanoconiosis',
    'a'.repeat(100), 'ab'.repeat(50), ' '.repeat(20), '\n'.repeat(10), 'the '.repeat(30),
    '1'.repeat(40), 'x'.repeat(5) + ' ' + 'y'.repeat(300),
    // Control characters.
    '\u0000', '\u0001\u0002', '\u007f', 'bell\u0007', 'vertical\u000btab', 'form\u000cfeed',
    // Whitespace-class corner cases and NFC.
    'a\u180eb', ' \u180e x', 'x \u180e', 'a\u2029b \u205f c\u1680d', '\u212b', 'A\u030a ring',
    '\u1100\u1161\u11a8 jamo', 'd\u0307\u0323', '\u0958 nukta', 'e\u0301\u0301', '\u0344',
    'sw', 'a sw b', 'swim', 'a sw', 'sw.', '(sw)', '_sw_', '1sw', 'e\u0301sw', '\u00e9 sw \u00e9', 'sw sw',
    'x-y-z--w', 'ABC DEF', 'a1b22c333', 'non-breaking\u00a0\u00a0 spaces', '  padded   runs  ',
  ];
  const wiki = fs.readFileSync(kWiki, 'utf8');
  const rows = wiki.split('\n\n');
  const picked = [];
  let total = 0;
  for (let i = 7; i < rows.length && total < 14000; i += 29) {
    if (rows[i].length <= 450) { picked.push(rows[i]); total += rows[i].length; }
  }
  // Rows with non-ASCII characters, and one multi-row chunk with the "\n\n" separators.
  let nonAscii = 0;
  for (let i = 0; i < rows.length && nonAscii < 12; ++i) {
    if (/[^\x00-\x7f]/.test(rows[i]) && rows[i].length <= 400) { picked.push(rows[i]); ++nonAscii; }
  }
  picked.push(rows.slice(100, 104).join('\n\n') + '\n');
  return hand.concat(picked);
}

function fnv1a64(ids) {
  let h = 0xcbf29ce484222325n;
  const prime = 0x100000001b3n;
  const mask = 0xffffffffffffffffn;
  for (const id of ids) {
    const u = id >>> 0;
    for (let k = 0; k < 4; ++k) {
      h ^= BigInt((u >>> (8 * k)) & 0xff);
      h = (h * prime) & mask;
    }
  }
  return h.toString(16).padStart(16, '0');
}

async function golden(tok, relPath, strings, wikiText, edge) {
  const ids = [], idsNoSpecial = [], decoded = [];
  for (let i = 0; i < strings.length; ++i) {
    const e = await tok.encode(strings[i], null, { addSpecialTokens: true });
    const v = Array.from(e.getIds());
    ids.push(v);
    if (i < kNoSpecial) {
      const e2 = await tok.encode(strings[i], null, { addSpecialTokens: false });
      idsNoSpecial.push(Array.from(e2.getIds()));
    }
    const d = await tok.decode(v, false);
    decoded.push(d === strings[i] ? null : d);
  }
  const w = Array.from((await tok.encode(wikiText, null, { addSpecialTokens: true })).getIds());
  return {
    tokenizer: relPath, ids, ids_nospecial: idsNoSpecial, decoded,
    wikitext: { count: w.length, fnv1a64: fnv1a64(w), first: w.slice(0, edge), last: w.slice(-edge) },
  };
}

// One array per line keeps the files diffable and compact.
function writeGolden(file, g) {
  const lines = [];
  lines.push('{');
  lines.push(`"tokenizer": ${JSON.stringify(g.tokenizer)},`);
  lines.push('"ids": [');
  lines.push(g.ids.map((v) => JSON.stringify(v)).join(',\n'));
  lines.push('],');
  lines.push('"ids_nospecial": [');
  lines.push(g.ids_nospecial.map((v) => JSON.stringify(v)).join(',\n'));
  lines.push('],');
  lines.push(`"decoded": ${JSON.stringify(g.decoded)},`);
  lines.push(`"wikitext": {"count": ${g.wikitext.count}, "fnv1a64": "${g.wikitext.fnv1a64}",`);
  lines.push(`"first": ${JSON.stringify(g.wikitext.first)},`);
  lines.push(`"last": ${JSON.stringify(g.wikitext.last)}}`);
  lines.push('}');
  fs.writeFileSync(file, lines.join('\n') + '\n');
}

async function main() {
  fs.mkdirSync(kOut, { recursive: true });
  const strings = testStrings();
  fs.writeFileSync(path.join(kOut, 'strings.json'),
                   '{"strings": [\n' + strings.map((s) => JSON.stringify(s)).join(',\n') + '\n]}\n');
  const wikiText = fs.readFileSync(kWiki, 'utf8');

  const made = buildTokenizers();
  const all = [['stories260K', 'data/models/stories260K/tokenizer.json']];
  for (const [name, json] of Object.entries(made)) {
    const rel = `tests/data/tokenizer/${name}.tokenizer.json`;
    fs.writeFileSync(path.join(kRoot, rel), JSON.stringify(json) + '\n');
    all.push([name, rel]);
  }
  for (const [name, rel] of all) {
    const tok = Tokenizer.fromFile(path.join(kRoot, rel));
    const g = await golden(tok, rel, strings, wikiText, name === 'stories260K' ? kEdge : kEdgeOther);
    writeGolden(path.join(kOut, `${name}.golden.json`), g);
    console.log(`${name}: ${strings.length} strings, wikitext ${g.wikitext.count} ids, fnv1a64 ${g.wikitext.fnv1a64}`);
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
