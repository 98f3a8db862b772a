--- lualign.nn.functional: the network ops as plain functions (PyTorch's F).
-- The heavy ones are fused C kernels with their own backward passes.

local core = require "lualign.core"
local util = require "lualign.util"
local K = core.nn

local ATTENTION_OPTS = {"causal", "offset", "scale", "key_mask", "segments", "window"}

local F = {}

--- y = x W^T + b, for x (..., in), weight (out, in), bias (out) or nil.
F.linear = K.linear

--- Normalises over the last dim: (x - mean) / sqrt(var + eps) * weight + bias.
function F.layer_norm(x, weight, bias, eps) return K.layer_norm(x, weight, bias, eps or 1e-5) end

--- x / sqrt(mean(x^2) + eps) * weight.
function F.rms_norm(x, weight, eps) return K.rms_norm(x, weight, eps or 1e-6) end

--- Zeroes elements with probability p and scales the rest by 1/(1-p); the
-- identity when not training or p == 0.
function F.dropout(x, p, training)
  if training == false or not p or p == 0 then return x end
  return K.dropout(x, p)
end

--- Rows of weight picked by 0-based ids of any shape: (..., dim), float32 (a
-- frozen bfloat16 or float16 table's rows are widened).  An id out of range is
-- an error at the line that called (model(ids), or this).
F.embedding = util.raise_at_caller(function(ids, weight)
  local shape = ids:shape()
  shape[#shape + 1] = weight:size(2)
  local rows = weight:index_select(1, ids:reshape(-1))
  if rows:dtype() ~= "float32" then rows = rows:float() end
  return rows:view(shape)
end)

--- softmax(q k^T * scale + masks) v for q (B, H, T, D), k and v (B, H, S, D).
-- opts: causal, offset (query i sits at key position i + offset), scale
-- (default 1/sqrt(D)), key_mask (B, S) (0 = never attend), segments (B, S)
-- integer ids (attend only within a segment: packed sequences), window (a
-- sliding window: query i sees keys j > i + offset - window).  k and v may
-- have fewer heads than q (grouped-query attention: a divisor of q's heads).
function F.attention(q, k, v, opts)
  return K.attention(q, k, v, util.check_options("attention", opts, ATTENTION_OPTS))
end

--- silu(gate) * up in one op (the Llama-family MLP), for tensors of one shape.
F.swiglu = K.swiglu

--- swiglu(gate, up) weight^T + bias as one op: the product is not kept for
-- the backward pass but made again there (saves a hidden-wide tensor per layer).
F.swiglu_linear = K.swiglu_linear

--- Rotary position embedding (rotate-half convention) applied in place to x
-- (B, T, H, D) at positions (B, T), reading cos and sin from a table made by
-- F.rope_table; returns x's memory as a new tensor that carries the gradient.
F.rope_ = K.rope_

--- cos and sin of p * inv_freq[i] for p = 0 .. length - 1: a (2, length,
-- #inv_freq) table for F.rope_ (inv_freq: a Lua list of numbers).
F.rope_table = K.rope_table

--- Attention from a fused projection qkv (B, T, 3 * C) with n_head heads; returns (B, T, C).
function F.attention_qkv(qkv, n_head, opts)
  return K.attention_qkv(qkv, n_head, util.check_options("attention_qkv", opts, ATTENTION_OPTS))
end

--- Activation checkpointing: fn(...) (which returns a tensor) without keeping
-- its intermediate activations.  The forward pass runs fn without recording a
-- graph; the backward pass runs it again, recording, with the same random
-- draws (dropout replays), and backpropagates through it.  Tensors that carry
-- gradient history must reach fn as arguments; parameters (leaves) may be
-- used freely.  Under no_grad it is a plain call.
F.checkpoint = K.checkpoint

--- y = x W^T + b + scaling * (xd A^T) B^T in one op: a linear layer with a
-- LoRA update, A (r, in), B (out, r), xd the input after the adapter's dropout
-- (nil: x).  W may be a frozen bfloat16/float16 weight.
function F.lora_linear(x, weight, bias, lora_A, lora_B, scaling, xd)
  return K.lora_linear(x, weight, bias, lora_A, lora_B, scaling, xd)
end

--- Mean cross-entropy of logits (N, V) against 0-based targets (N,).
-- opts: ignore_index (default -100), label_smoothing.  Returns loss, counted rows.
function F.cross_entropy(logits, targets, opts)
  return K.cross_entropy(logits, targets, util.check_options("cross_entropy", opts, {"ignore_index", "label_smoothing"}))
end

--- Activations and softmax as functions of a tensor: F.relu(x) is x:relu(),
-- F.gelu(x [, approximate]), F.softmax(x [, dim]), ...
F.gelu = function(x, approximate) return x:gelu(approximate) end
F.relu = function(x) return x:relu() end
F.silu = function(x) return x:silu() end
F.tanh = function(x) return x:tanh() end
F.sigmoid = function(x) return x:sigmoid() end
F.softmax = function(x, dim) return x:softmax(dim) end
F.log_softmax = function(x, dim) return x:log_softmax(dim) end

return F
