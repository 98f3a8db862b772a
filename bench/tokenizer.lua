--- Encode throughput of lualign's tokenizers against npm tokenizers run on
-- this machine's Node.js, in the same command.
--
--   bin/lualign bench/tokenizer.lua [--mb 4] [--runs 5] [--tokenizers gpt2,qwen3,mistral]
--                                   [--peers js-tiktoken,gpt-tokenizer,tiktoken | none]
--                                   [--against DIR,...]
--
-- from the repository root after `make`.  Needs Node.js and npm (the npm
-- registry, once, to install the peers).
--
-- Tokenizers: gpt2 (the bundled GPT-2 files; peers js-tiktoken,
-- gpt-tokenizer and tiktoken, or --peers), and the Hugging Face folders of
-- tests/fixtures/tokenizers/: qwen3 (byte-level BPE with the NFC normalizer
-- and Qwen's Split regex) and mistral (SentencePiece-style BPE: Prepend and
-- Replace normalizers, byte fallback, no pre-tokenizer), each against
-- transformers.js (@huggingface/transformers, JavaScript) and tokenizers-rust
-- (@anush008/tokenizers, Hugging Face's Rust library through its Node
-- binding).  gpt-3-encoder is a further GPT-2 peer, left out by default: it
-- is quadratic in the length of a document (about 0.02 MB/s here).
-- --peers none runs no npm peer.  --against DIR runs lualign from another
-- checkout DIR (built with make; its lua/ and build/) as one more peer, in
-- the same alternation: an A/B of two versions of lualign.
--
-- Corpus: the Debian copyright files under /usr/share/doc (English prose,
-- names, licences, some non-ASCII), sorted by path, valid UTF-8 only,
-- concatenated up to --mb megabytes; each file is one document, encoded with
-- one call.  Written to build/bench/tokenizer_corpus.json, read by both
-- sides.  The npm packages are installed once into build/bench/node.
--
-- Each run is a fresh process (lualign or one peer, alternating) that loads
-- its tokenizer untimed, then times two passes over every document: pass 1
-- (cold word cache) and pass 2 (warm).  Reported: median MB/s over the runs,
-- and the ratio lualign / peer of the medians.  Token counts must agree.

local PEER_VERSIONS = {
  ["gpt-3-encoder"] = "1.1.4", ["js-tiktoken"] = "1.0.21", ["gpt-tokenizer"] = "4.0.0", ["tiktoken"] = "1.0.22",
  ["transformers.js"] = "4.3.1", ["tokenizers-rust"] = "0.6.0",
}
local PEER_PACKAGES = {["transformers.js"] = "@huggingface/transformers", ["tokenizers-rust"] = "@anush008/tokenizers"}
local HF_PEERS = "transformers.js,tokenizers-rust"
local HF_DIRS = {qwen3 = "tests/fixtures/tokenizers/qwen3", mistral = "tests/fixtures/tokenizers/mistral"}

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok, code
end

local function parse_args(argv)
  local o = {mb = 4, runs = 5, tokenizers = "gpt2"}
  local i = 1
  while i <= #argv do
    local k = argv[i]:match("^%-%-(.+)$")
    if k == "run" then o.run = argv[i + 1]; o.corpus = argv[i + 2]; o.tokenizer = argv[i + 3]; i = i + 4
    elseif k then o[k] = argv[i + 1]; i = i + 2
    else error("unknown argument " .. argv[i]) end
  end
  return o
end

local opts = parse_args(arg)

----------------------------------------------------------------------------
-- One lualign run (a child process)

if opts.run == "lualign" then
  local la = require "lualign"
  local cjson = require "cjson"
  local f = assert(io.open(opts.corpus, "rb"))
  local docs = cjson.decode(f:read("a"))
  f:close()
  local name = opts.tokenizer
  local tok = la.tokenizer.load(HF_DIRS[name] or name)
  -- GPT-2's peers treat <|endoftext|> as text; the others recognise specials (none occur)
  local eopts = name == "gpt2" and {split_special_tokens = true} or nil
  local bytes = 0
  for _, d in ipairs(docs) do bytes = bytes + #d end
  local function pass()
    local tokens = 0
    local t0 = la.clock()
    for _, d in ipairs(docs) do tokens = tokens + #tok:encode(d, eopts) end
    return la.clock() - t0, tokens
  end
  local s1, n1 = pass()
  local s2, n2 = pass()
  assert(n1 == n2, "token counts differ between passes")
  print(string.format("pass1_s=%.6f pass2_s=%.6f bytes=%d tokens=%d", s1, s2, bytes, n1))
  os.exit(0)
end

----------------------------------------------------------------------------
-- The driver

local mb = tonumber(opts.mb)
local runs = math.tointeger(tonumber(opts.runs))
local tokenizers = {}
for t in opts.tokenizers:gmatch("[^,]+") do
  if t ~= "gpt2" and not HF_DIRS[t] then error("unknown tokenizer " .. t .. " (gpt2, qwen3, mistral)") end
  tokenizers[#tokenizers + 1] = t
end
local function peers_of(t)
  local list = {}
  if opts.peers == "none" then return list end
  for p in ((t == "gpt2" and opts.peers) or (t == "gpt2" and "js-tiktoken,gpt-tokenizer,tiktoken") or HF_PEERS)
      :gmatch("[^,]+") do
    if not PEER_VERSIONS[p] then error("unknown peer " .. p) end
    list[#list + 1] = p
  end
  return list
end

os.execute("mkdir -p build/bench/node")
local corpus = "build/bench/tokenizer_corpus.json"

-- The corpus.
do
  local cjson = require "cjson"
  local files = {}
  local p = assert(io.popen("ls /usr/share/doc/*/copyright 2>/dev/null | LC_ALL=C sort"))
  for line in p:lines() do files[#files + 1] = line end
  p:close()
  local docs, total, limit = {}, 0, math.floor(mb * 1e6)
  for _, path in ipairs(files) do
    local f = io.open(path, "rb")
    local s = f and f:read("a")
    if f then f:close() end
    -- valid UTF-8 only, so that Node reads the same bytes; no U+FEFF or U+0085,
    -- which JavaScript's \s classifies unlike GPT-2's reference
    if s and #s > 0 and utf8.len(s) and not s:find("\u{FEFF}", 1, true) and not s:find("\u{85}", 1, true) then
      if total + #s > limit and #docs > 0 then break end
      docs[#docs + 1] = s
      total = total + #s
    end
  end
  local f = assert(io.open(corpus, "wb"))
  f:write(cjson.encode(docs))
  f:close()
  print(string.format("corpus: %d documents, %.2f MB (Debian copyright files)", #docs, total / 1e6))
end

-- The peers, installed together when one is missing.
do
  local all, missing = {}, false
  for _, t in ipairs(tokenizers) do
    for _, p in ipairs(peers_of(t)) do
      local pkg = PEER_PACKAGES[p] or p
      all[#all + 1] = pkg .. "@" .. PEER_VERSIONS[p]
      local f = io.open("build/bench/node/node_modules/" .. pkg .. "/package.json")
      if f then f:close() else missing = true end
    end
  end
  if missing then
    print("installing npm packages: " .. table.concat(all, " "))
    -- --ignore-scripts: transformers' optional ONNX runtime would download binaries
    local out, ok = sh("cd build/bench/node && npm install --no-save --no-audit --no-fund --ignore-scripts --silent "
      .. table.concat(all, " "))
    if not ok then error("npm install failed:\n" .. out) end
  end
end

local node_version = (sh("node --version")):gsub("%s+$", "")

local function run_one(cmd)
  local out, ok = sh(cmd)
  local s1, s2, bytes, tokens = out:match("pass1_s=(%S+) pass2_s=(%S+) bytes=(%d+) tokens=(%d+)")
  if not ok or not s1 then error("run failed: " .. cmd .. "\n" .. out) end
  return {tonumber(s1), tonumber(s2), tonumber(bytes), tonumber(tokens)}
end

local function median(t)
  table.sort(t)
  local n = #t
  return n % 2 == 1 and t[(n + 1) / 2] or (t[n / 2] + t[n / 2 + 1]) / 2
end

local lualign_medians = {}
for _, tname in ipairs(tokenizers) do
  local peers = peers_of(tname)
  -- the child sees the same module paths as this process
  local lua_cmd = string.format("LUA_PATH='%s' LUA_CPATH='%s' lua5.4 bench/tokenizer.lua --run lualign %s %s",
    package.path, package.cpath, corpus, tname)
  local results, names, commands = {lualign = {}}, {"lualign"}, {lualign = lua_cmd}
  for _, p in ipairs(peers) do
    results[p] = {}
    names[#names + 1] = p
    commands[p] = string.format("NODE_PATH=build/bench/node/node_modules node bench/tokenizer_peer.js %s %s %s", p,
      corpus, HF_DIRS[tname] or "")
  end
  for dir in (opts.against or ""):gmatch("[^,]+") do
    local name = "lualign " .. dir
    results[name] = {}
    names[#names + 1] = name
    commands[name] = string.format("LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;;' LUA_CPATH='%s/build/?.so;;' "
      .. "lua5.4 bench/tokenizer.lua --run lualign %s %s", dir, dir, dir, corpus, tname)
  end
  print(string.format("\ntokenizer %s", tname))
  for r = 1, runs do
    local order = {}   -- alternate the order from run to run
    for i = 1, #names do order[i] = names[(r % 2 == 1) and i or (#names - i + 1)] end
    for _, name in ipairs(order) do
      results[name][r] = run_one(commands[name])
      io.write(string.format("run %d %-16s pass1 %7.2f MB/s  pass2 %7.2f MB/s  tokens %d\n", r, name,
        results[name][r][3] / results[name][r][1] / 1e6, results[name][r][3] / results[name][r][2] / 1e6,
        results[name][r][4]))
      io.flush()
    end
  end
  local med = {}
  for _, name in ipairs(names) do
    local a, b = {}, {}
    for r = 1, runs do
      a[r] = results[name][r][3] / results[name][r][1] / 1e6
      b[r] = results[name][r][3] / results[name][r][2] / 1e6
    end
    med[name] = {median(a), median(b), results[name][1][4]}
  end
  lualign_medians[tname] = med.lualign
  print(string.format("\n%s: node %s, %d runs, medians (MB/s of UTF-8 input):", tname, node_version, runs))
  print(string.format("%-32s %10s %10s %12s %16s %16s", "tokenizer", "pass 1", "pass 2", "tokens",
    "lualign/peer p1", "lualign/peer p2"))
  for _, name in ipairs(names) do
    local label = PEER_VERSIONS[name] and ("npm " .. (PEER_PACKAGES[name] or name) .. " " .. PEER_VERSIONS[name]) or name
    local m = med[name]
    local r1 = name == "lualign" and "" or string.format("%.2fx", med.lualign[1] / m[1])
    local r2 = name == "lualign" and "" or string.format("%.2fx", med.lualign[2] / m[2])
    print(string.format("%-32s %10.2f %10.2f %12d %16s %16s", label, m[1], m[2], m[3], r1, r2))
    if m[3] ~= med.lualign[3] then print("  WARNING: token count differs from lualign's") end
  end
end

if #tokenizers > 1 then
  print("\nlualign, medians (MB/s), and each tokenizer against the first:")
  local base = lualign_medians[tokenizers[1]]
  for _, t in ipairs(tokenizers) do
    local m = lualign_medians[t]
    print(string.format("%-10s pass 1 %7.2f  pass 2 %7.2f   %s/%s: %.2fx  %.2fx", t, m[1], m[2], t, tokenizers[1],
      m[1] / base[1], m[2] / base[2]))
  end
end
