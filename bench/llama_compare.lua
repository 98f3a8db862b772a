-- bench/llama_compare.lua -- the Llama-family benchmark: lualign against the
-- PyTorch peer (bench/llama_torch.py) in one command, alternating rounds.
--
--   flock /tmp/lualign-bench.lock lua5.4 bench/llama_compare.lua [rounds] [qwen_rounds] [peers]
--   (make bench-llama; peers: a comma list of stock, tuned, jemalloc, default all)
--
-- SmolLM2-135M's shape (training step at context 256, batch 4; batch-1
-- KV-cache generation) for `rounds` rounds, then Qwen2.5-0.5B's shape (load
-- from BF16 safetensors, forward+backward at context 512, batch 2; batch-1
-- generation against the memory-bandwidth floor) for `qwen_rounds`.  In each
-- round every contender runs once in a process of its own: the peer with
-- the stock allocator, with glibc's malloc tuned (no mmap, no trimming) and
-- with jemalloc, and lualign, in an order that reverses every other round.
-- The peer is credited with its best allocator; all three are reported.

package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local common = require "common"
local run_json, median = common.run_json, common.median

local rounds = tonumber(arg[1]) or 3
local qwen_rounds = tonumber(arg[2]) or 1
local here = arg[0]:match("^(.*)/[^/]*$") or "."
local lua_env = common.lua_env(here)
local wanted = {}
for k in (arg[3] or "stock,tuned,jemalloc"):gmatch("[^,]+") do wanted[k] = true end
local peers = {}
for _, p in ipairs(common.allocators()) do
  if wanted[p.key] then peers[#peers + 1] = {key = p.key, name = "torch " .. p.name, env = p.env} end
end

local function peer(p, shape, modes, extra)
  return run_json(string.format("OMP_WAIT_POLICY=PASSIVE %s /usr/bin/python3 %s/llama_torch.py %s --threads 2 --modes %s %s",
    p.env, here, shape, modes, extra or ""))
end

local function lualign(shape, steps, modes, folder)
  return run_json(string.format("%s lua5.4 %s/llama.lua %s %d 1 %s %s", lua_env, here, shape, steps, modes, folder or ""))
end

local samples = {}
local function record(who, metric, v)
  samples[who] = samples[who] or {}
  samples[who][metric] = samples[who][metric] or {}
  if v then table.insert(samples[who][metric], v) end
end
local function med(who, metric) return median((samples[who] or {})[metric] or {}) end

local function contenders(r)
  local list = {}
  for _, p in ipairs(peers) do list[#list + 1] = p end
  list[#list + 1] = {name = "lualign"}
  if r % 2 == 0 then
    local rev = {}
    for i = #list, 1, -1 do rev[#rev + 1] = list[i] end
    list = rev
  end
  return list
end

-- SmolLM2-135M shape
for r = 1, rounds do
  for _, c in ipairs(contenders(r)) do
    local res = c.name == "lualign" and lualign("smollm", 2, "train,generate")
                or peer(c, "smollm", "train,generate", "--steps 2")
    record(c.name, "smol_tok_s", res.train.tokens_per_s)
    record(c.name, "smol_rss", res.peak_rss_MiB)
    record(c.name, "smol_gen", res.generate.ms_per_token)
    record(c.name, "smol_tokens", nil)
    samples[c.name].smol_gen_tokens = res.generate.tokens
    io.stderr:write(string.format("round %d smollm %-18s %.0f tok/s, peak %.0f MiB, %.2f ms/token\n", r, c.name,
      res.train.tokens_per_s, res.peak_rss_MiB, res.generate.ms_per_token))
  end
end

-- Qwen2.5-0.5B shape
local folder
if qwen_rounds > 0 then
  folder = os.tmpname()
  os.remove(folder)
  lualign("qwen", 0, "save", folder)
end
for r = 1, qwen_rounds do
  for _, c in ipairs(contenders(r)) do
    local res = c.name == "lualign" and lualign("qwen", 2, "bandwidth,load,fwdbwd,generate", folder)
                or peer(c, "qwen", "load,fwdbwd,generate", "--steps 2 --file " .. folder .. "/model.safetensors")
    record(c.name, "qwen_load", res.load_s)
    record(c.name, "qwen_fwdbwd_ms", res.fwdbwd.ms_per_step)
    record(c.name, "qwen_gen", res.generate.ms_per_token)
    record(c.name, "qwen_rss", res.peak_rss_MiB)
    if res.read_GB_s then record(c.name, "read_GB_s", res.read_GB_s); record(c.name, "weight_bytes", res.weight_bytes) end
    io.stderr:write(string.format("round %d qwen %-18s load %.2f s, fwd+bwd %.0f ms, %.1f ms/token\n", r, c.name,
      res.load_s, res.fwdbwd.ms_per_step, res.generate.ms_per_token))
  end
end
if folder then os.execute("rm -rf " .. folder) end

-- the peer's best allocator per metric (higher tokens/s, lower time and memory)
local function best_peer(metric, higher)
  local best, who
  for _, p in ipairs(peers) do
    local v = med(p.name, metric)
    if v == v and (not best or (higher and v > best) or (not higher and v < best)) then best, who = v, p.name end
  end
  return best, who
end

print(string.format("rounds: %d (SmolLM2-135M shape), %d (Qwen2.5-0.5B shape); medians; 2 threads", rounds, qwen_rounds))
print()
print("| contender | train tok/s (smol) | peak RSS MiB (smol) | KV-cache gen ms/token (smol) | load s (qwen, BF16) | fwd+bwd ms (qwen) | gen ms/token (qwen) | peak RSS MiB (qwen) |")
print("|---|---|---|---|---|---|---|---|")
local names = {}
for _, p in ipairs(peers) do names[#names + 1] = p.name end
names[#names + 1] = "lualign"
for _, n in ipairs(names) do
  print(string.format("| %s | %.0f | %.0f | %.2f | %.2f | %.0f | %.1f | %.0f |", n, med(n, "smol_tok_s"), med(n, "smol_rss"),
    med(n, "smol_gen"), med(n, "qwen_load"), med(n, "qwen_fwdbwd_ms"), med(n, "qwen_gen"), med(n, "qwen_rss")))
end
print()
local tok, tok_who = best_peer("smol_tok_s", true)
local rss, rss_who = best_peer("smol_rss", false)
local gen, gen_who = best_peer("smol_gen", false)
print(string.format("training tokens/s: lualign / best peer (%s) = %.2fx (target >= 1.2x)", tok_who, med("lualign", "smol_tok_s") / tok))
print(string.format("peak RSS: lualign / best peer (%s) = %.2f (target <= 0.7)", rss_who, med("lualign", "smol_rss") / rss))
print(string.format("KV-cache generation: best peer (%s) / lualign = %.2fx faster (target >= 2x)", gen_who, gen / med("lualign", "smol_gen")))
if qwen_rounds > 0 then
  local bw, bytes = med("lualign", "read_GB_s"), med("lualign", "weight_bytes")
  local floor_ms = bytes / (bw * 1e9) * 1e3
  local qfb, qfb_who = best_peer("qwen_fwdbwd_ms", false)
  local qg, qg_who = best_peer("qwen_gen", false)
  local ql, ql_who = best_peer("qwen_load", false)
  print(string.format("qwen: DRAM read %.1f GB/s, float32 weights %.2f GB: floor %.1f ms/token; lualign %.1f ms/token (%.2fx the floor), best peer (%s) %.1f",
    bw, bytes / 1e9, floor_ms, med("lualign", "qwen_gen"), med("lualign", "qwen_gen") / floor_ms, qg_who, qg))
  print(string.format("qwen: fwd+bwd lualign %.0f ms, best peer (%s) %.0f ms (%.2fx); load lualign %.2f s (model built and filled), peer (%s) %.2f s (tensors only)",
    med("lualign", "qwen_fwdbwd_ms"), qfb_who, qfb, qfb / med("lualign", "qwen_fwdbwd_ms"), med("lualign", "qwen_load"), ql_who, ql))
end
