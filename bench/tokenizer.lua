--- Encode throughput of lualign's GPT-2 tokenizer against npm GPT-2
-- tokenizers run on this machine's Node.js, in the same command.
--
--   bin/lualign bench/tokenizer.lua [--mb 4] [--runs 5] [--peers js-tiktoken,gpt-tokenizer,tiktoken]
--
-- from the repository root after `make`.  Needs Node.js and npm (the npm
-- registry, once, to install the peers).  gpt-3-encoder is a fourth possible
-- peer, left out by default: it is quadratic in the length of a document
-- (about 0.02 MB/s on this corpus).
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
}

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok, code
end

local function parse_args(argv)
  local o = {mb = 4, runs = 5, peers = "js-tiktoken,gpt-tokenizer,tiktoken"}
  local i = 1
  while i <= #argv do
    local k = argv[i]:match("^%-%-(.+)$")
    if k == "run" then o.run = argv[i + 1]; o.corpus = argv[i + 2]; i = i + 3
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
  local tok = la.tokenizer.load("gpt2")
  local bytes = 0
  for _, d in ipairs(docs) do bytes = bytes + #d end
  local function pass()
    local tokens = 0
    local t0 = la.clock()
    for _, d in ipairs(docs) do tokens = tokens + #tok:encode(d, {split_special_tokens = true}) end
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
local peers = {}
for p in opts.peers:gmatch("[^,]+") do peers[#peers + 1] = p end

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

-- The peers.
for _, p in ipairs(peers) do
  if not PEER_VERSIONS[p] then error("unknown peer " .. p) end
  local f = io.open("build/bench/node/node_modules/" .. p .. "/package.json")
  if f then
    f:close()
  else
    local specs = {}
    for _, q in ipairs(peers) do specs[#specs + 1] = q .. "@" .. PEER_VERSIONS[q] end
    print("installing npm packages: " .. table.concat(specs, " "))
    local out, ok = sh("cd build/bench/node && npm install --no-save --no-audit --no-fund --silent " .. table.concat(specs, " "))
    if not ok then error("npm install failed:\n" .. out) end
    break
  end
end

local node_version = (sh("node --version")):gsub("%s+$", "")
-- the child sees the same module paths as this process
local lua_cmd = string.format("LUA_PATH='%s' LUA_CPATH='%s' lua5.4 bench/tokenizer.lua --run lualign %s",
  package.path, package.cpath, corpus)

local function run_one(cmd)
  local out, ok = sh(cmd)
  local s1, s2, bytes, tokens = out:match("pass1_s=(%S+) pass2_s=(%S+) bytes=(%d+) tokens=(%d+)")
  if not ok or not s1 then error("run failed: " .. cmd .. "\n" .. out) end
  return {tonumber(s1), tonumber(s2), tonumber(bytes), tonumber(tokens)}
end

local results = {lualign = {}}
for _, p in ipairs(peers) do results[p] = {} end
local names = {"lualign"}
for _, p in ipairs(peers) do names[#names + 1] = p end

for r = 1, runs do
  -- alternate the order from run to run
  local order = {}
  for i = 1, #names do order[i] = names[(r % 2 == 1) and i or (#names - i + 1)] end
  for _, name in ipairs(order) do
    local cmd = name == "lualign" and lua_cmd
      or string.format("NODE_PATH=build/bench/node/node_modules node bench/tokenizer_peer.js %s %s", name, corpus)
    results[name][r] = run_one(cmd)
    io.write(string.format("run %d %-14s pass1 %7.2f MB/s  pass2 %7.2f MB/s  tokens %d\n", r, name,
      results[name][r][3] / results[name][r][1] / 1e6, results[name][r][3] / results[name][r][2] / 1e6,
      results[name][r][4]))
    io.flush()
  end
end

local function median(t)
  table.sort(t)
  local n = #t
  return n % 2 == 1 and t[(n + 1) / 2] or (t[n / 2] + t[n / 2 + 1]) / 2
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

print(string.format("\nnode %s, %d runs, medians (MB/s of UTF-8 input):", node_version, runs))
print(string.format("%-22s %10s %10s %12s %16s %16s", "tokenizer", "pass 1", "pass 2", "tokens",
  "lualign/peer p1", "lualign/peer p2"))
for _, name in ipairs(names) do
  local label = name == "lualign" and "lualign" or ("npm " .. name .. " " .. PEER_VERSIONS[name])
  local m = med[name]
  local r1 = name == "lualign" and "" or string.format("%.2fx", med.lualign[1] / m[1])
  local r2 = name == "lualign" and "" or string.format("%.2fx", med.lualign[2] / m[2])
  print(string.format("%-22s %10.2f %10.2f %12d %16s %16s", label, m[1], m[2], m[3], r1, r2))
  if m[3] ~= med.lualign[3] then print("  WARNING: token count differs from lualign's") end
end
