// fp4q/model/tokenizer.h — a C++ reader of Hugging Face `tokenizer.json` files, so fp4q can turn
// calibration and evaluation text into token ids without Python.
//
// Scope: BPE models only, in the two families LLM checkpoints use:
//   * SentencePiece-style BPE (Llama-2, Mistral, TinyLlama, stories260K): normalizer
//     Sequence[Prepend("▁"), Replace(" " -> "▁")] or a Metaspace pre-tokenizer, `byte_fallback`
//     <0xXX> tokens, `fuse_unk`, TemplateProcessing adding BOS;
//   * byte-level BPE (GPT-2, Llama-3, Qwen2/2.5/3): ByteLevel pre-tokenizer with the GPT-2 split
//     regex, or Sequence[Split(Regex), ByteLevel(use_regex=false)] with the Llama-3/Qwen2 regexes,
//     NFC normalizer (Qwen), `ignore_merges` (Llama-3), merges as "a b" strings or [a, b] pairs.
// Supported components (anything else in tokenizer.json is an fp4q::Error(kInput) that names the
// file and the component, with the hint to pass pre-tokenised ids instead):
//   normalizers     Sequence, Prepend, Replace (String or Regex), Strip, NFC
//   pre_tokenizers  Sequence, ByteLevel, Split (String or Regex; all five behaviours, invert),
//                   Metaspace (prepend_scheme always/first/never, split), Digits, Whitespace,
//                   WhitespaceSplit, Punctuation
//   model           BPE (byte_fallback, fuse_unk, unk_token, ignore_merges,
//                   continuing_subword_prefix, end_of_word_suffix; dropout must be null or 0)
//   post_processor  TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence
//   decoder         ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, BPEDecoder, Sequence
//                   (decode() is best effort: an unknown decoder only makes decode() join tokens)
//   truncation / padding are ignored (fp4q wants the whole text).
//
// Invariants and semantics (match tokenizers 0.23 `Tokenizer.encode(text, add_special_tokens).ids`):
//   * Regexes run with PCRE2 (UTF + UCP) where tokenizers uses Oniguruma; they agree on the
//     supported patterns (golden tests in tests/tokenizer cover Unicode, emoji, digits, spaces).
//   * Added tokens (tokenizer.json `added_tokens`) are matched leftmost-longest in the raw text
//     (normalized=false) and in the normalised pieces (normalized=true), honouring lstrip, rstrip
//     and single_word; special tokens written inside the text are therefore encoded as specials.
//   * tokenizer_config.json, when given, supplies bos_token / eos_token; when it sets
//     add_bos_token or add_eos_token explicitly (true/false) those replace the special tokens of
//     tokenizer.json's post-processor for single sequences (as transformers' Llama tokenizers do).
//   * Input text must be valid UTF-8 (else Error kInput with the byte offset).
//   * A Tokenizer is immutable after loading; encode/decode are const and thread-safe, and copies
//     share the loaded tables.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace fp4q::model {

namespace detail {
struct TokenizerImpl;
}

class Tokenizer {
 public:
  // Loads <model_dir>/tokenizer.json and, when present, <model_dir>/tokenizer_config.json.
  static Tokenizer from_dir(const std::string& model_dir);
  // tokenizer_config_json may be empty (no config).
  static Tokenizer from_file(const std::string& tokenizer_json,
                             const std::string& tokenizer_config_json = {});
  // The same from the texts of the two files (config_text empty = no tokenizer_config.json);
  // `name` stands for the tokenizer.json path in errors. For tests and fuzzing.
  static Tokenizer from_json_text(const std::string& tokenizer_json_text,
                                  const std::string& config_text = {},
                                  const std::string& name = "tokenizer.json");

  // Token ids of `text` (UTF-8), like tokenizers' `encode(text, add_special_tokens).ids`.
  std::vector<int32_t> encode(const std::string& text, bool add_special_tokens = true) const;
  // Best-effort text of `ids` (special tokens included, unknown ids skipped), like tokenizers'
  // `decode(ids, skip_special_tokens=false)` for the supported decoders.
  std::string decode(const std::vector<int32_t>& ids) const;

  // -1 when the tokenizer has no such token.
  int32_t bos_id() const;
  int32_t eos_id() const;
  // Largest id of the model vocabulary and the added tokens, plus one.
  int vocab_size() const;
  // The token string of `id` (model vocab or added token); empty when unknown.
  std::string id_to_token(int32_t id) const;

 private:
  explicit Tokenizer(std::shared_ptr<const detail::TokenizerImpl> impl) : impl_(std::move(impl)) {}
  static Tokenizer from_json_text(const std::string& tokenizer_json_text,
                                  const std::string& config_text, const std::string& name,
                                  const std::string& config_name);
  std::shared_ptr<const detail::TokenizerImpl> impl_;
};

// Pre-tokenised calibration input. Accepts either
//   * a text file of token ids separated by whitespace and/or commas ('#' starts a comment that
//     runs to the end of the line), or
//   * a JSON array of integers (nested arrays are flattened in order).
// Ids must be integers in [0, 2^31). Errors (kIo for unreadable files, kInput otherwise) name the
// file and the 1-based line. A file without any id is an error.
std::vector<int32_t> read_token_ids(const std::string& path);
// The same parser over the text of such a file; `where` stands for the path in errors.
std::vector<int32_t> parse_token_ids(const std::string& text, const std::string& where);

namespace detail {

// One BPE merge rule: the pair (left, right) of token ids merges into `merged` with priority
// `rank` (lower merges first).
struct BpeMergeRule {
  int32_t rank;
  int32_t merged;
};
// Merge table keyed by bpe_pair_key(left, right).
inline uint64_t bpe_pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

class BpeMergeTable;  // opaque hash map, see make_bpe_merge_table

std::shared_ptr<BpeMergeTable> make_bpe_merge_table(
    const std::vector<std::pair<std::pair<int32_t, int32_t>, BpeMergeRule>>& rules);

// Applies the merges to the symbol sequence `symbols` (token ids of single characters) and
// returns the merged ids. Fast version: priority queue of candidate pairs ordered by
// (rank, position) over a linked list of symbols, exactly as tokenizers' Word::merge_all;
// O(n log n) in the number of symbols.
std::vector<int32_t> bpe_merge(const std::vector<int32_t>& symbols, const BpeMergeTable& table);
// Reference twin: repeatedly merges the lowest-rank adjacent pair (leftmost on ties); O(n^2).
// Agrees with bpe_merge whenever no two different pairs merge into the same id.
std::vector<int32_t> bpe_merge_ref(const std::vector<int32_t>& symbols, const BpeMergeTable& table);

// FNV-1a 64 over the ids as int32 little-endian bytes (used by the golden tests and for
// fingerprints of token streams): basis 0xcbf29ce484222325, prime 0x100000001b3.
uint64_t fnv1a64_ids(const std::vector<int32_t>& ids);

// Unicode NFC of valid UTF-8 `s` (tables generated from Unicode 14 data by
// tools/golden_tokenizer/gen_nfc_tables.py).
std::string nfc(const std::string& s);

}  // namespace detail
}  // namespace fp4q::model
