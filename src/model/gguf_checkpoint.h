#pragma once
// A GGUF file (llama.cpp's `llama` or `deepseek` architecture, dense or MoE)
// opened as a Checkpoint: its metadata becomes the Hugging Face config the
// engine already understands (LlamaForCausalLM, MixtralForCausalLM or
// DeepseekForCausalLM) and its tensors are presented under the HF names:
//
//   token_embd / output_norm / output          -> model.embed_tokens / model.norm / lm_head
//   blk.N.attn_norm, ffn_norm                  -> input_layernorm, post_attention_layernorm
//   blk.N.attn_q/k/v/output                    -> self_attn.q/k/v/o_proj (q, k rows un-permuted
//                                                 from llama.cpp's interleaved RoPE order)
//   blk.N.ffn_gate/up/down                     -> mlp.gate/up/down_proj (dense)
//   blk.N.ffn_gate_inp, ffn_{gate,up,down}_exps[e] -> mixtral router / experts.e.w1, w3, w2
//                                                 (deepseek: mlp.gate / mlp.experts.e.*)
//   blk.N.ffn_{gate,up,down}_shexp             -> deepseek mlp.shared_experts.*
//
// f32, f16 and bf16 tensors stay in the mapping (an expert is a slice of the
// stacked tensor); q and k are copied once to undo the permutation; q8_0 tensors
// are dequantised to f32 at load (4 bytes per weight in memory, exact values).
#include <string>

#include "model/checkpoint.h"

namespace moefy {

Checkpoint open_gguf_checkpoint(const std::string& path);

}  // namespace moefy
