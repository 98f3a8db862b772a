--- lualign.loss: training losses as thin wrappers over fused C kernels.
-- Each loss returns a scalar loss tensor and a table of metrics (plain Lua
-- numbers, named as TRL names them where TRL has the metric).
--
--     local lp = loss.sequence_logprobs(logits, targets, mask)          -- (B,)
--     local l, m = loss.gdpo(pc, pr, rc, rr, {beta = 0.1, p = soft})    -- scalar, metrics
--     print(m["rewards/accuracies"])
--
-- Shapes: logits (B, T, V), hidden states (B, T, C), LM-head weight (V, C),
-- targets (B, T) of 0-based ids, masks (B, T) of 0/1 (any dtype; read as
-- float weights); per-sequence log-probs and rewards are (B,).  See
-- docs/losses.md for the formulas.

local core = require "lualign.core"
local util = require "lualign.util"
local K = core.nn

local loss = {}

-- Each function's options, checked by name (an unknown key is an error with
-- a did-you-mean, never silently ignored).
local function options(where, opts, known) return util.check_options("loss." .. where, opts, known) end

--- Mean cross-entropy of logits (N, V) — or (B, T, V), flattened — against
-- 0-based targets of the matching shape.  opts: ignore_index (-100),
-- label_smoothing (0).  Metrics: tokens (rows counted).
function loss.cross_entropy(logits, targets, opts)
  options("cross_entropy", opts, {"ignore_index", "label_smoothing"})
  if logits:dim() > 2 then
    logits = logits:reshape(-1, logits:size(-1))
    targets = targets:reshape(-1)
  end
  local value, count = K.cross_entropy(logits, targets, opts)
  return value, {tokens = count}
end

----------------------------------------------------------------------------
-- Log-probabilities and entropy, fused (no (B, T, V) log-softmax is stored)

local function kernel_opts(opts, reduce)
  opts = opts or {}
  return {reduce = reduce, temperature = opts.temperature, chunk_rows = opts.chunk_rows}
end

--- Per-token log-probs (B, T) of 0-based targets under softmax(logits /
-- temperature), times the mask (positions where the mask is 0 hold 0 and
-- their targets are never read, so -100 or any filler may stay there).
-- mask may be nil (all ones).  opts: temperature (1).  Differentiable in logits.
function loss.token_logprobs(logits, targets, mask, opts)
  options("token_logprobs", opts, {"temperature"})
  return K.logprobs(logits, targets, mask, kernel_opts(opts, "token"))
end

--- Per-sequence log-probs (B,): the masked sum over T of the token log-probs,
-- or with opts.average = true their mean over the mask (0 for an empty mask),
-- as IPO and length-normalised losses want.  opts: average, temperature.
function loss.sequence_logprobs(logits, targets, mask, opts)
  options("sequence_logprobs", opts, {"average", "temperature"})
  return K.logprobs(logits, targets, mask, kernel_opts(opts, opts and opts.average and "mean" or "sum"))
end

--- token_logprobs from hidden states (B, T, C) and the LM-head weight (V, C)
-- without materialising the logits: rows go through in chunks (opts.chunk_rows;
-- by default about 64 MiB of scratch logits) and are recomputed in backward.
-- Gradients flow to hidden and weight.  opts: temperature, chunk_rows.
function loss.token_logprobs_hidden(hidden, weight, targets, mask, opts)
  options("token_logprobs_hidden", opts, {"temperature", "chunk_rows"})
  return K.logprobs_hidden(hidden, weight, targets, mask, kernel_opts(opts, "token"))
end

--- sequence_logprobs from hidden states and the LM-head weight, logits-free.
-- opts: average, temperature, chunk_rows.
function loss.sequence_logprobs_hidden(hidden, weight, targets, mask, opts)
  options("sequence_logprobs_hidden", opts, {"average", "temperature", "chunk_rows"})
  return K.logprobs_hidden(hidden, weight, targets, mask,
    kernel_opts(opts, opts and opts.average and "mean" or "sum"))
end

--- Entropy -sum_v p log p of softmax(logits / temperature) per token (B, T),
-- times the mask.  opts: temperature, reduce ("token" (default), "sum" or
-- "mean" over T).  Differentiable.
function loss.entropy(logits, mask, opts)
  options("entropy", opts, {"temperature", "reduce"})
  return K.entropy(logits, mask, kernel_opts(opts, opts and opts.reduce or "token"))
end

--- entropy from hidden states (B, T, C) and the LM-head weight (V, C),
-- logits-free.  opts: temperature, reduce, chunk_rows.
function loss.entropy_hidden(hidden, weight, mask, opts)
  options("entropy_hidden", opts, {"temperature", "reduce", "chunk_rows"})
  return K.entropy_hidden(hidden, weight, mask, kernel_opts(opts, opts and opts.reduce or "token"))
end

----------------------------------------------------------------------------
-- Preference losses over per-sequence log-probs

--- The preference losses, by name: la.loss.<name>(...) exists for each.
loss.preference_losses = {"dpo", "cdpo", "rdpo", "ipo", "hinge", "gdpo", "gipo", "simpo"}

--- A preference loss by name (see loss.preference_losses), for the pair
-- policy_chosen, policy_rejected, ref_chosen, ref_rejected: (B,) sequence
-- log-probs; the references may be nil (reference-free).  opts: beta (0.1);
-- p, soft labels (B,) in [0, 1] (or one number for all pairs), the share
-- preferring the first sequence — p < 0.5 flips a pair; label_smoothing,
-- used as p = 1 - label_smoothing when p is nil (cDPO's global form; for rDPO
-- it is the flip rate eps instead); eps (rDPO, default 0.1).  Returns the mean
-- loss and the metrics rewards/chosen, rewards/rejected, rewards/accuracies,
-- rewards/margins, logps/chosen, logps/rejected (means over the batch, with
-- "chosen" the side the label prefers; rewards are beta * log-ratios).
function loss.preference(name, policy_chosen, policy_rejected, ref_chosen, ref_rejected, opts)
  if name == "simpo" then return loss.simpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, opts) end
  opts = options(name, opts, {"beta", "p", "label_smoothing", "eps"})
  local p = opts.p
  if type(p) == "number" then p = core.full({policy_chosen:numel()}, p) end
  local o = {beta = opts.beta, p = p, label_smoothing = opts.label_smoothing}
  if name == "rdpo" then
    o.eps, o.label_smoothing = opts.eps or opts.label_smoothing, nil
  end
  return K.pref_loss(name, policy_chosen, policy_rejected, ref_chosen, ref_rejected, o)
end

--- DPO (Rafailov et al. 2023): -log sigmoid(beta h), on the majority label.
function loss.dpo(pc, pr, rc, rr, opts) return loss.preference("dpo", pc, pr, rc, rr, opts) end
--- cDPO, the soft-label cross-entropy: -p log sigmoid(beta h) - (1 - p) log sigmoid(-beta h).
function loss.cdpo(pc, pr, rc, rr, opts) return loss.preference("cdpo", pc, pr, rc, rr, opts) end
--- rDPO (Chowdhury et al. 2024) with a global flip rate eps:
-- [-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps).
function loss.rdpo(pc, pr, rc, rr, opts) return loss.preference("rdpo", pc, pr, rc, rr, opts) end
--- IPO (Azar et al. 2023): (h - 1/(2 beta))^2; pair it with averaged log-probs.
function loss.ipo(pc, pr, rc, rr, opts) return loss.preference("ipo", pc, pr, rc, rr, opts) end
--- Hinge (SLiC): max(0, 1 - beta h).
function loss.hinge(pc, pr, rc, rr, opts) return loss.preference("hinge", pc, pr, rc, rr, opts) end
--- GDPO (Furuta et al. 2024): -log sigmoid(beta (2p - 1) h).
function loss.gdpo(pc, pr, rc, rr, opts) return loss.preference("gdpo", pc, pr, rc, rr, opts) end
--- GIPO, geometric averaging applied to IPO: ((2p - 1) h - 1/(2 beta))^2.
function loss.gipo(pc, pr, rc, rr, opts) return loss.preference("gipo", pc, pr, rc, rr, opts) end

--- SimPO (Meng et al. 2024), reference-free with a target margin gamma:
-- -log sigmoid(beta (a1 - a2) - gamma) over a1, a2 the (B,) per-token mean
-- log-probs of the two sequences (sequence_logprobs with average = true).
-- With soft labels p (as for the other losses): -p log sigmoid(beta (a1 -
-- a2) - gamma) - (1 - p) log sigmoid(beta (a2 - a1) - gamma), each side
-- asking for the margin in its favour, so p = 1 is SimPO and the swap
-- (y1, y2, p) -> (y2, y1, 1 - p) leaves the loss unchanged.  The reference
-- arguments must be nil.  opts: beta (2), gamma (1), p, label_smoothing.
-- Metrics as for the other losses (rewards are beta * a).
function loss.simpo(pc, pr, rc, rr, opts)
  opts = options("simpo", opts, {"beta", "gamma", "p", "label_smoothing"})
  if rc ~= nil or rr ~= nil then
    util.error("loss.simpo: SimPO is reference-free: give nil for the reference log-probs")
  end
  local beta, gamma = opts.beta or 2.0, opts.gamma or 1.0
  if not (beta > 0) then util.error(string.format("loss.simpo: beta must be positive (got %s)", tostring(beta))) end
  local B = pc:numel()
  local p = opts.p
  if p == nil then p = 1 - (opts.label_smoothing or 0) end
  if type(p) == "number" then p = core.full({B}, p) end
  local d = (pc - pr) * beta
  local per_pair = -(p * (d - gamma):logsigmoid() + (1 - p) * (-d - gamma):logsigmoid())
  local value = per_pair:mean()
  -- metrics in the label's orientation: the side p prefers is "chosen" (p = 0.5 keeps the order)
  local first = p:ge(0.5):float()
  local a1, a2 = pc:detach(), pr:detach()
  local ch, rj = a1 * first + a2 * (1 - first), a2 * first + a1 * (1 - first)
  local metrics = {
    ["rewards/chosen"] = (ch * beta):mean():item(), ["rewards/rejected"] = (rj * beta):mean():item(),
    ["rewards/accuracies"] = ch:gt(rj):float():mean():item(), ["rewards/margins"] = ((ch - rj) * beta):mean():item(),
    ["logps/chosen"] = ch:mean():item(), ["logps/rejected"] = rj:mean():item(),
  }
  return value, metrics
end

----------------------------------------------------------------------------
-- Reward model

--- Bradley–Terry loss of a reward model over rewards (B,) of the chosen and
-- rejected sequences: mean of -log sigmoid(r1 - r2 - margin); with soft labels
-- opts.p (B,) (or a number), -p log sigmoid(z) - (1 - p) log sigmoid(-z) with
-- z = r1 - r2 - margin; plus opts.center * mean((r1 + r2)^2) (reward centring,
-- TRL's center_rewards_coefficient).  opts.margin: a number or (B,) tensor.
-- Metrics: accuracy, margin (mean r1 - r2), rewards/chosen, rewards/rejected,
-- in the label's orientation (p < 0.5 flips a pair).
function loss.bradley_terry(r_chosen, r_rejected, opts)
  opts = options("bradley_terry", opts, {"p", "margin", "center"})
  local p = opts.p
  if type(p) == "number" then p = core.full({r_chosen:numel()}, p) end
  return K.bradley_terry(r_chosen, r_rejected, {p = p, margin = opts.margin, center = opts.center})
end
--- Same as bradley_terry, under the name of what it trains.
loss.reward_model = loss.bradley_terry

----------------------------------------------------------------------------
-- PPO

--- Clipped policy surrogate: masked mean over tokens of
-- max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)), ratio = exp(logprobs - old_logprobs),
-- for (B, T) logprobs (differentiable), old_logprobs and advantages (data).
-- opts: clip_eps (0.2), or clip_eps_low / clip_eps_high for an asymmetric range.
-- Metrics: policy/clipfrac_avg, policy/approxkl_avg (0.5 mean (logp - old)^2),
-- val/ratio (mean ratio), tokens (sum of the mask).
function loss.ppo_policy(logprobs, old_logprobs, advantages, mask, opts)
  options("ppo_policy", opts, {"clip_eps", "clip_eps_low", "clip_eps_high"})
  return K.ppo_policy_loss(logprobs, old_logprobs, advantages, mask, opts)
end

--- Clipped value loss: 0.5 * masked mean of max((V - R)^2, (clip(V, V_old - eps,
-- V_old + eps) - R)^2) for values (differentiable), old_values and returns (B, T).
-- opts: clip_eps (0.2).  Metrics: val/clipfrac_avg, tokens.
function loss.ppo_value(values, old_values, returns, mask, opts)
  options("ppo_value", opts, {"clip_eps"})
  return K.ppo_value_loss(values, old_values, returns, mask, opts)
end

--- Per-token KL estimate of the policy against the reference from log-probs
-- (B, T) of the sampled tokens (Schulman's estimators): "k1" = logp - ref_logp,
-- "k2" = (logp - ref_logp)^2 / 2, "k3" = (r - 1) - log r with r = p_ref / p.
-- opts: a string (the estimator) or {estimator = "k1", mask = (B, T)}.
-- Differentiable through both log-probs.
function loss.kl(logprobs, ref_logprobs, opts)
  if type(opts) == "string" then opts = {estimator = opts} end
  opts = options("kl", opts, {"estimator", "mask"})
  local est = opts.estimator or "k1"
  local d = logprobs - ref_logprobs
  local k
  if est == "k1" then k = d
  elseif est == "k2" then k = d * d * 0.5
  elseif est == "k3" then k = (-d):exp() - 1 + d
  else error("kl: estimator must be 'k1', 'k2' or 'k3' (got '" .. tostring(est) .. "')", 2) end
  if opts.mask then k = k * opts.mask:float() end
  return k
end

--- Generalised advantage estimation over rewards and values (B, T) of
-- right-padded responses (mask (B, T), nil = all real): positions where the
-- mask is 0 are skipped and get 0; after the last real token the value is 0.
-- opts: gamma (1), lam (0.95).  Returns advantages and returns (= advantages +
-- values), with no history.
function loss.gae(rewards, values, mask, opts)
  options("gae", opts, {"gamma", "lam"})
  return K.gae(rewards:detach(), values:detach(), mask, opts)
end

--- Index (B,) (0-based) of each row's last position whose mask is non-zero (0 for an empty row).
function loss.last_positions(mask)
  local B, T = mask:size(1), mask:size(2)
  local pos = core.arange(T):float():unsqueeze(1):expand(B, T)
  return (pos * mask:ne(0):float()):argmax(2)
end

--- rewards (B, T) plus scores (B,) added at each row's last real token (mask
-- (B, T)); rows with no real token are left alone.  Returns a new tensor.
function loss.add_score(rewards, scores, mask)
  local last = loss.last_positions(mask):unsqueeze(2)
  local has = mask:ne(0):float():sum(2):gt(0):float()
  local out = rewards:detach():clone()
  out:scatter_add_(2, last, (scores:detach():float() * has):unsqueeze(2))
  return out
end

--- PPO's per-token rewards as TRL builds them: -kl_coef * KL(policy || ref)
-- on every real token, plus the score (B,) at the last real token.
-- opts: kl_coef (0.05), estimator ("k1"), has_eos ((B,) bool or 0/1) and
-- missing_eos_penalty (subtracted from the score of rows without EOS).
-- Returns rewards (B, T) (no history) and the metrics objective/kl,
-- objective/non_score_reward, objective/scores, objective/rlhf_reward
-- (batch means of per-sequence sums).
function loss.ppo_rewards(scores, logprobs, ref_logprobs, mask, opts)
  opts = options("ppo_rewards", opts, {"kl_coef", "estimator", "has_eos", "missing_eos_penalty"})
  local previous = core.set_grad_enabled(false)
  local ok, rewards, metrics = pcall(function()
    local m = mask:float()
    local s = scores:float()
    if opts.missing_eos_penalty and opts.has_eos then
      s = s - (1 - opts.has_eos:ne(0):float()) * opts.missing_eos_penalty
    end
    local kl = loss.kl(logprobs, ref_logprobs, {estimator = opts.estimator, mask = m})
    local non_score = kl * -(opts.kl_coef or 0.05)
    local r = loss.add_score(non_score, s, m)
    local mean_kl = kl:sum(2):mean():item()
    local mean_ns = non_score:sum(2):mean():item()
    local mean_score = s:mean():item()
    return r, {["objective/kl"] = mean_kl, ["objective/non_score_reward"] = mean_ns,
               ["objective/scores"] = mean_score, ["objective/rlhf_reward"] = mean_score + mean_ns}
  end)
  core.set_grad_enabled(previous)
  if not ok then error(rewards, 2) end
  return rewards, metrics
end

----------------------------------------------------------------------------
-- GRPO (Shao et al. 2024, DeepSeekMath; Liu et al. 2025, Dr. GRPO)

--- Group-relative advantages of rewards (G, K): K samples of each of G
-- prompts.  A = (r - mean_group) / (std_group + eps), std the unbiased
-- (Bessel) standard deviation of the group's K rewards, as TRL computes it;
-- opts.scale = false leaves out the division (Dr. GRPO: A = r - mean_group).
-- opts: scale (true), eps (1e-4).  Returns (G, K) advantages (no history)
-- and the share of groups whose rewards are all equal (no signal).
function loss.grpo_advantages(rewards, opts)
  opts = options("grpo_advantages", opts, {"scale", "eps"})
  if rewards:dim() ~= 2 or rewards:size(2) < 2 then
    util.error(string.format("loss.grpo_advantages: rewards must be (groups, samples) with at least 2 samples per "
      .. "group (got shape %s)", rewards:shape_str()))
  end
  local previous = core.set_grad_enabled(false)
  local r = rewards:float()
  local K = r:size(2)
  local mean = r:mean(2, true)
  local centred = r - mean
  local std = (centred:square():sum(2, true) / (K - 1)):sqrt()
  local flat = std:eq(0):float():mean():item()
  local adv = centred
  if opts.scale ~= false then adv = centred / (std + (opts.eps or 1e-4)) end
  core.set_grad_enabled(previous)
  return adv, flat
end

-- What each loss_type divides the summed per-token losses by, named.
local GRPO_LOSS_TYPES = {grpo = true, token = true, dr_grpo = true}

--- The GRPO loss of a batch of sampled completions, as a mean over units:
-- per token, l = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta k3,
-- rho = exp(logprobs - old_logprobs) (the ratio to the policy that sampled),
-- A the completion's advantage, k3 = exp(ref - logp) - (ref - logp) - 1 the
-- per-token KL estimate against the reference.  logprobs (B, T)
-- (differentiable), old_logprobs and ref_logprobs (B, T) data, advantages (B,),
-- mask (B, T) of the completions' tokens.  opts.loss_type says how the
-- token losses are averaged, and which units the returned mean is over:
--   "grpo"     each completion's mean over its tokens, then the mean over
--              completions (DeepSeekMath's 1/G sum_i 1/|o_i| sum_t); units:
--              completions;
--   "token"    the sum over every token of the batch / their number (DAPO's
--              token-level mean; TRL's "dapo"); units: tokens;
--   "dr_grpo"  each completion's sum over its tokens / max_tokens (a
--              constant: Dr. GRPO's length normalisation), then the mean over
--              completions; units: completions.
-- opts: clip_eps (0.2), clip_eps_high (clip_eps), beta (0), ref_logprobs
-- (needed when beta > 0), loss_type ("grpo"), max_tokens (for dr_grpo).
-- Returns the loss (scalar) and metrics, means over the same units: kl
-- (mean k3), clip_ratio (share of tokens whose ratio was clipped),
-- units (how many units the mean is over).
function loss.grpo(logprobs, old_logprobs, advantages, mask, opts)
  opts = options("grpo", opts, {"clip_eps", "clip_eps_high", "beta", "ref_logprobs", "loss_type", "max_tokens"})
  local loss_type = opts.loss_type or "grpo"
  if not GRPO_LOSS_TYPES[loss_type] then
    util.error(string.format("loss.grpo: loss_type must be 'grpo', 'token' or 'dr_grpo' (got '%s')", tostring(loss_type)))
  end
  local beta = opts.beta or 0
  if beta ~= 0 and not opts.ref_logprobs then util.error("loss.grpo: beta > 0 needs opts.ref_logprobs") end
  if loss_type == "dr_grpo" and not (type(opts.max_tokens) == "number" and opts.max_tokens > 0) then
    util.error("loss.grpo: loss_type 'dr_grpo' needs opts.max_tokens (the completion length cap)")
  end
  local B = logprobs:size(1)
  if advantages:dim() ~= 1 or advantages:size(1) ~= B then
    util.error(string.format("loss.grpo: advantages must be (B,) = (%d,) (got shape %s)", B, advantages:shape_str()))
  end
  local low = opts.clip_eps or 0.2
  local high = opts.clip_eps_high or low
  local m = mask:float()
  local A = advantages:detach():float():unsqueeze(2)
  local ratio = (logprobs - old_logprobs:detach()):exp()
  local clipped = ratio:clamp(1 - low, 1 + high)
  local per_token = -(ratio * A):minimum(clipped * A)
  local kl
  if opts.ref_logprobs then
    local d = opts.ref_logprobs:detach() - logprobs
    kl = d:exp() - d - 1
    if beta ~= 0 then per_token = per_token + kl * beta end
  end
  local tokens = m:sum(2)
  local value, units
  local previous = core.set_grad_enabled(false)
  -- weights of the loss, and of the metrics (a token share, per completion
  -- unless the units are tokens)
  local weights, per_unit
  if loss_type == "token" then
    units = m:sum():item()
    per_unit = m / units
    weights = per_unit
  else
    units = B
    per_unit = m / (tokens:clamp(1):unsqueeze(2) * B)
    weights = loss_type == "grpo" and per_unit or m / (opts.max_tokens * B)
  end
  -- The clip binds (and the token's gradient is 0) where the ratio left the
  -- range on the side its advantage pushes it to.
  local was_clipped = ratio:gt(1 + high):float() * A:gt(0):float() + ratio:lt(1 - low):float() * A:lt(0):float()
  local metrics = {units = units, clip_ratio = (was_clipped * per_unit):sum():item()}
  if kl then metrics.kl = (kl * per_unit):sum():item() end
  core.set_grad_enabled(previous)
  value = (per_token * weights):sum()
  return value, metrics
end

--- Masked mean sum(x * mask) / sum(mask), over everything or along dim.
function loss.masked_mean(x, mask, dim)
  local m = mask:float()
  if dim then return (x * m):sum(dim) / m:sum(dim) end
  return (x * m):sum() / m:sum()
end

--- Masked variance over everything; unbiased (default true) applies Bessel's
-- correction n / (n - 1) with n = sum(mask), as TRL does.
function loss.masked_var(x, mask, unbiased)
  local mean = loss.masked_mean(x, mask)
  local var = loss.masked_mean((x - mean) ^ 2, mask)
  if unbiased ~= false then
    local n = mask:float():sum():item()
    if n <= 1 then
      error(string.format("masked_var: the mask sums to %g; an unbiased variance needs more than 1", n), 2)
    end
    var = var * (n / (n - 1))
  end
  return var
end

--- (x - mean) / sqrt(var + 1e-8) with masked statistics (unbiased variance);
-- shift_mean = false adds the mean back.  Masked-out positions are set to 0.
function loss.masked_whiten(x, mask, shift_mean)
  local mean, var = loss.masked_mean(x, mask), loss.masked_var(x, mask)
  local w = (x - mean) * (var + 1e-8):rsqrt()
  if shift_mean == false then w = w + mean end
  return w * mask:ne(0):float()
end

----------------------------------------------------------------------------
-- Errors point at the caller's line: every public function is wrapped so that
-- a failure is raised again at the user's line, without the positions inside
-- the library that the kernel's message would otherwise carry.

for name, fn in pairs(loss) do
  if type(fn) == "function" then loss[name] = util.raise_at_caller(fn) end
end

return loss
