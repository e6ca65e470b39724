#!/usr/bin/python3
"""Write a random-weight GGUF with Lance's decoder shapes (Qwen2 arch, llama.cpp naming), for the
side-by-side with llama.cpp (README, "Comparing with llama.cpp"). Not used by the build or tests.

Usage: PYTHONPATH=LLAMA_CPP/gguf-py /usr/bin/python3 scripts/make_qwen2_gguf.py OUT.gguf [TOKENIZER_DIR]
  (TOKENIZER_DIR: vocab.json, merges.txt, tokenizer_config.json of Qwen2; default
  ../shared/data/qwen2-tokenizer)

Shapes: hidden 2048, 36 layers, 16 heads / 2 KV heads (head dim 128), FFN 11008,
vocab 151936, q/k/v biases, untied output.weight [151936, 2048].
Matrices are BF16 drawn from N(0, 0.02); norm weights are 1.0 and biases N(0, 0.002),
both F32 (as llama.cpp's converter stores 1-D tensors). Tensors are generated and
written one at a time (in 64M-element chunks), so memory stays bounded.
"""
import json
import sys

import numpy as np

import gguf

TOK_DIR = sys.argv[2] if len(sys.argv) > 2 else "../shared/data/qwen2-tokenizer"
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 2048, 36, 16, 2, 128
FFN, VOCAB, CTX = 11008, 151936, 32768
KV = KV_HEADS * HEAD_DIM  # 256

rng = np.random.default_rng(1234)


def tensor_plan():
    """(name, numpy shape [rows, cols] or [n], kind) in file order; kind: mat / norm / bias."""
    plan = [("token_embd.weight", (VOCAB, HIDDEN), "mat")]
    for i in range(LAYERS):
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (HIDDEN,), "norm"),
            (p + "attn_q.weight", (HIDDEN, HIDDEN), "mat"),
            (p + "attn_q.bias", (HIDDEN,), "bias"),
            (p + "attn_k.weight", (KV, HIDDEN), "mat"),
            (p + "attn_k.bias", (KV,), "bias"),
            (p + "attn_v.weight", (KV, HIDDEN), "mat"),
            (p + "attn_v.bias", (KV,), "bias"),
            (p + "attn_output.weight", (HIDDEN, HIDDEN), "mat"),
            (p + "ffn_norm.weight", (HIDDEN,), "norm"),
            (p + "ffn_gate.weight", (FFN, HIDDEN), "mat"),
            (p + "ffn_up.weight", (FFN, HIDDEN), "mat"),
            (p + "ffn_down.weight", (HIDDEN, FFN), "mat"),
        ]
    plan += [("output_norm.weight", (HIDDEN,), "norm"), ("output.weight", (VOCAB, HIDDEN), "mat")]
    return plan


def bf16_random(shape, std=0.02, chunk=1 << 26):
    """N(0, std) as BF16 bit patterns (uint16, round-to-nearest-even), made chunk by chunk."""
    n = int(np.prod(shape))
    out = np.empty(n, dtype=np.uint16)
    for s in range(0, n, chunk):
        f = rng.standard_normal(min(chunk, n - s), dtype=np.float32) * np.float32(std)
        u = f.view(np.uint32)
        u = (u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16  # RNE to the top 16 bits
        out[s:s + len(u)] = u.astype(np.uint16)
    return out.reshape(shape)


def load_vocab():
    """Token strings + types from the real Qwen2 tokenizer, padded to VOCAB like convert_hf_to_gguf."""
    vocab = json.load(open(f"{TOK_DIR}/vocab.json", encoding="utf-8"))
    added = json.load(open(f"{TOK_DIR}/tokenizer_config.json", encoding="utf-8"))["added_tokens_decoder"]
    tokens = [f"[PAD{i}]" for i in range(VOCAB)]
    types = [gguf.TokenType.UNUSED] * VOCAB
    for tok, i in vocab.items():
        tokens[i], types[i] = tok, gguf.TokenType.NORMAL
    for i, info in added.items():
        i = int(i)
        tokens[i] = info["content"]
        types[i] = gguf.TokenType.CONTROL if info.get("special") else gguf.TokenType.USER_DEFINED
    merges = [l.rstrip("\n") for l in open(f"{TOK_DIR}/merges.txt", encoding="utf-8")
              if l.strip() and not l.startswith("#version")]
    return tokens, types, merges


def main(path):
    w = gguf.GGUFWriter(path, "qwen2")
    w.add_name("lance3b-random")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    tokens, types, merges = load_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(151643)
    w.add_eos_token_id(151645)
    w.add_pad_token_id(151643)
    w.add_add_bos_token(False)

    plan = tensor_plan()
    for name, shape, kind in plan:  # declare all tensor infos first ...
        if kind == "mat":
            w.add_tensor_info(name, shape, np.dtype(np.uint16), int(np.prod(shape)) * 2,
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, kind in plan:  # ... then stream the data in the same order
        if kind == "mat":
            data = bf16_random(shape)
        elif kind == "norm":
            data = np.ones(shape, dtype=np.float32)
        else:
            data = (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.002))
        w.write_tensor_data(data)
        print(name, shape, kind, flush=True)
    w.close()


if __name__ == "__main__":
    main(sys.argv[1])
