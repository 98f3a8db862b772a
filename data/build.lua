#!/usr/bin/env lua5.4
-- Rebuilds every bundled dataset under data/ from Debian and npm packages.
--
--   lua5.4 data/build.lua            (from the checkout's root, or anywhere)
--   lua5.4 data/build.lua arith      (the generated arithmetic problems alone:
--                                     no package needed)
--
-- Needs (and, run as root, installs the Debian ones): r-cran-janeaustenr (brings
-- r-base-core: Rscript reads the package's .rda data), bsdgames, wordnet-base,
-- lua-cjson, and npm (npm pack fetches the sentiment and vader-sentiment
-- tarballs).  The output is deterministic: the same package versions give the
-- same bytes (data/MANIFEST.tsv lists sizes and SHA-256 sums).  What each file
-- holds, its source, version and licence: data/README.md.

local here = (arg[0]:match("^(.*)/[^/]*$") or ".")
-- Where the files go: data/ itself, or for the arithmetic step alone a folder
-- given after it (lua5.4 data/build.lua arith /tmp/out), to compare with data/.
local DATA = arg[1] == "arith" and arg[2] or here
package.path = here .. "/../lua/?.lua;" .. here .. "/../lua/?/init.lua;" .. package.path
local rng = require("lualign.data.batch").rng
local cjson = require "cjson"

local VERSIONS = {
  ["r-cran-janeaustenr"] = "1.0.0-1", bsdgames = "2.17-29+b1", ["wordnet-base"] = "1:3.0-37",
  sentiment = "5.0.2", ["vader-sentiment"] = "1.1.3",
}
local SEED = 20240531

----------------------------------------------------------------------------
-- Shell and files

local function sh(cmd)
  local ok = os.execute(cmd)
  if not ok then error("command failed: " .. cmd, 0) end
end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local s = p:read("a")
  p:close()
  return s
end

local function readfile(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local written = {}
local function writefile(rel, text)
  local path = DATA .. "/" .. rel
  sh("mkdir -p '" .. path:match("^(.*)/[^/]*$") .. "'")
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  written[#written + 1] = rel
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- JSON with a fixed key order (cjson's depends on the hash order) and no
-- escaping of "/" or of UTF-8.
local function jstr(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local named = {['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r"}
    return named[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function jnum(x)
  if math.type(x) == "integer" then return tostring(x) end
  local s = string.format("%.4f", x):gsub("0+$", ""):gsub("%.$", ".0")
  return s
end

local function jobj(pairs_list)
  local parts = {}
  for _, kv in ipairs(pairs_list) do
    local k, v = kv[1], kv[2]
    if v ~= nil then
      local enc = type(v) == "string" and jstr(v) or jnum(v)
      parts[#parts + 1] = jstr(k) .. ": " .. enc
    end
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function jsonl(lines) return table.concat(lines, "\n") .. "\n" end

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local function log(fmt, ...) io.stderr:write(string.format(fmt, ...), "\n") end

----------------------------------------------------------------------------
-- Prerequisites

local function dpkg_version(pkg)
  local v = capture("dpkg-query -W -f='${Version}' " .. pkg .. " 2>/dev/null")
  return v ~= "" and v or nil
end

local function prerequisites()
  local missing = {}
  for _, pkg in ipairs({"r-cran-janeaustenr", "bsdgames", "wordnet-base"}) do
    if not dpkg_version(pkg) then missing[#missing + 1] = pkg end
  end
  if #missing > 0 then
    if capture("id -u"):match("^0") then
      log("installing: %s", table.concat(missing, " "))
      sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
        .. "--no-install-recommends " .. table.concat(missing, " ") .. " >/dev/null")
    else
      error("missing packages; run: sudo apt-get install -y --no-install-recommends "
        .. table.concat(missing, " "), 0)
    end
  end
  if not os.execute("command -v npm >/dev/null 2>&1") then
    error("npm is needed to fetch the npm packages (Debian: apt-get install npm)", 0)
  end
  for pkg, want in pairs(VERSIONS) do
    local have = dpkg_version(pkg)
    if have and have ~= want then
      log("warning: %s is %s; data/README.md documents %s (outputs may differ)", pkg, have, want)
    end
  end
end

----------------------------------------------------------------------------
-- Jane Austen: three novels, one paragraph per line, every 10th chapter held out

local NOVELS = {
  {"prideprejudice", "Pride and Prejudice"},
  {"persuasion", "Persuasion"},
  {"northangerabbey", "Northanger Abbey"},
}

local function build_austen(tmp)
  local names = {}
  for _, n in ipairs(NOVELS) do names[#names + 1] = n[1] end
  sh(string.format("Rscript -e 'library(janeaustenr); for (n in c(%s)) writeLines(get(n), file.path(\"%s\", paste0(n, \".txt\")), useBytes = TRUE)'",
    '"' .. table.concat(names, '","') .. '"', tmp))
  local train, valid = {}, {}
  local stats = {}
  for _, novel in ipairs(NOVELS) do
    local text = readfile(tmp .. "/" .. novel[1] .. ".txt")
    local paragraphs, cur = {}, {}
    local function flush()
      if #cur > 0 then
        local para = table.concat(cur, " "):gsub("_", ""):gsub("%s+", " ")
        paragraphs[#paragraphs + 1] = trim(para)
        cur = {}
      end
    end
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
      if line:find("%S") then cur[#cur + 1] = trim(line) else flush() end
    end
    flush()
    local chapter = 0
    local n_train, n_valid = 0, 0
    for _, para in ipairs(paragraphs) do
      if para:match("^CHAPTER %w+%.?$") or para:match("^Chapter %w+%.?$") then chapter = chapter + 1 end
      local dst = (chapter > 0 and chapter % 10 == 0) and valid or train
      dst[#dst + 1] = para
      if dst == valid then n_valid = n_valid + #para + 1 else n_train = n_train + #para + 1 end
    end
    stats[#stats + 1] = string.format("%s: %d chapters, %d train bytes, %d validation bytes",
      novel[2], chapter, n_train, n_valid)
  end
  writefile("austen/train.txt", table.concat(train, "\n") .. "\n")
  writefile("austen/validation.txt", table.concat(valid, "\n") .. "\n")
  for _, s in ipairs(stats) do log("austen: %s", s) end
  return table.concat(train, "\n")
end

----------------------------------------------------------------------------
-- Question answering: bsdgames quiz files and WordNet glosses

-- The quiz files' notation: {x} optional, [a|b] one of, a|b one of at the top,
-- \ escapes.  The canonical answer takes optional parts and first alternatives.
local function canonical(s)
  local pos = 1
  local function seq(stop)
    local alts, cur = {}, {}
    while pos <= #s do
      local c = s:sub(pos, pos)
      if c == "\\" then cur[#cur + 1] = s:sub(pos + 1, pos + 1); pos = pos + 2
      elseif c == "{" or c == "[" then
        pos = pos + 1
        cur[#cur + 1] = seq(c == "{" and "}" or "]")
      elseif c == stop then pos = pos + 1; break
      elseif c == "|" then alts[#alts + 1] = table.concat(cur); cur = {}; pos = pos + 1
      else cur[#cur + 1] = c; pos = pos + 1 end
    end
    alts[#alts + 1] = table.concat(cur)
    return alts[1]
  end
  return trim((seq(nil):gsub("%s+", " ")))
end

local function quiz_rows(file)
  local text = readfile("/usr/share/games/bsdgames/quiz/" .. file):gsub("\\\n", "")
  local rows = {}
  for line in text:gmatch("[^\n]+") do
    local fields, cur, i = {}, {}, 1
    while i <= #line do
      local c = line:sub(i, i)
      if c == "\\" then cur[#cur + 1] = line:sub(i, i + 1); i = i + 2
      elseif c == ":" then fields[#fields + 1] = table.concat(cur); cur = {}; i = i + 1
      else cur[#cur + 1] = c; i = i + 1 end
    end
    fields[#fields + 1] = table.concat(cur)
    rows[#rows + 1] = fields
  end
  return rows
end

local function titlecase(s) return (s:gsub("(%a)(%w*)", function(a, b) return a:upper() .. b end)) end

-- {file, question column, answer column, question format, optional transform}
local QUIZ = {
  {"africa", 1, 2, "What is the capital of %s?"},
  {"america", 1, 2, "What is the capital of %s?"},
  {"asia", 1, 2, "What is the capital of %s?"},
  {"europe", 1, 2, "What is the capital of %s?"},
  {"province", 1, 2, "What is the capital of the Canadian province of %s?"},
  {"midearth", 1, 2, "In Middle-earth, what is the chief city of %s?"},
  {"state", 1, 2, "What is the capital of %s?"},
  {"state", 1, 3, "What is the postal abbreviation of %s?"},
  {"state", 1, 4, "What is the state flower of %s?"},
  {"elements", 4, 1, "What is the chemical symbol of %s?"},
  {"elements", 4, 2, "What is the atomic number of %s?"},
  {"elements", 1, 4, "Which element has the chemical symbol %s?"},
  {"arith", 1, 2, "Fill in the blank: %s"},
  {"mult", 1, 2, "What is %s?"},
  {"babies", 1, 2, "A %s is the young of which animal?"},
  {"collectives", 1, 2, "What is the collective noun for a group of %s?"},
  {"flowers", 1, 2, "In the language of flowers, what does the %s mean?"},
  {"latin", 1, 2, "What does the Latin word \"%s\" mean?"},
  {"sexes", 1, 2, "What is the female counterpart of a %s?"},
  {"posneg", 1, 2, "What is the opposite of \"%s\"?"},
  {"chinese", 1, 2, "In the Chinese zodiac, which year follows the year of the %s?"},
  {"pres", 1, 2, "In which years was %s President of the United States?"},
  {"pres", 1, 3, "Who was vice president under President %s?"},
  {"pres", 1, 4, "Who succeeded %s as President of the United States?"},
  {"sov", 1, 3, "Who succeeded %s on the English throne?"},
  {"inca", 1, 2, "Which Inca ruler succeeded %s?", titlecase},
  {"morse", 1, 2, "What is the Morse code for %s?"},
  {"trek", 1, 2, "In Star Trek, what is the %s?"},
  {"bard", 1, 2, "In Shakespeare, which line follows \"%s\"?"},
  {"bard", 1, 3, "Which play of Shakespeare's has the line \"%s\"?"},
  {"poetry", 1, 2, "Which line of poetry follows \"%s\"?"},
  {"poetry", 1, 4, "Who wrote the line \"%s\"?"},
}

local function build_quiz()
  local out, seen = {}, {}
  for _, q in ipairs(QUIZ) do
    local file, qc, ac, fmt, tf = q[1], q[2], q[3], q[4], q[5]
    for _, row in ipairs(quiz_rows(file)) do
      local qs, as = row[qc], row[ac]
      if qs and as and qs ~= "" and as ~= "" then
        qs, as = canonical(qs), canonical(as)
        if tf then qs, as = tf(qs), tf(as) end
        if qs ~= "" and as ~= "" and as ~= "gok" then
          local prompt = string.format(fmt, qs)
          if not seen[prompt] then
            seen[prompt] = true
            out[#out + 1] = {prompt = prompt, completion = as, source = "quiz/" .. file}
          end
        end
      end
    end
  end
  return out
end

local STOP = {}
for w in ([[the and to of a i in was her it not that she be he his had you as for with is
  but have my at on all him so by they which there this would been were could me from
  no or very what any much said an such mr mrs miss must will more one do if their
  them we your should than am how when who can only did may being every own some
  might are has then its our those into these shall well too us out now here]]):gmatch("%a+") do
  STOP[w] = true
end

local POS_FILES = {n = "noun", v = "verb", a = "adj", r = "adv"}
local POS_WORDS = {n = "noun", v = "verb", a = "adjective", r = "adverb"}

local function wordnet_index()
  local idx = {}
  for _, pos in ipairs({"n", "v", "a", "r"}) do
    for line in io.lines("/usr/share/wordnet/index." .. POS_FILES[pos]) do
      if line:sub(1, 1) ~= " " then
        local f = {}
        for w in line:gmatch("%S+") do f[#f + 1] = w end
        local lemma, synset_cnt, p_cnt = f[1], tonumber(f[3]), tonumber(f[4])
        local tag = tonumber(f[4 + p_cnt + 2])
        local first = f[4 + p_cnt + 3]
        if lemma:match("^[a-z]+$") and synset_cnt and first then
          local cur = idx[lemma]
          if not cur or tag > cur.tag then
            idx[lemma] = {pos = pos, tag = tag, offset = tonumber(first)}
          end
        end
      end
    end
  end
  return idx
end

local function wordnet_gloss(files, pos, offset)
  local f = files[pos]
  f:seek("set", offset)
  local line = f:read("l")
  local gloss = line:match("| (.*)$")
  gloss = trim(gloss)
  local def = gloss:match('^(.-);%s*"') or gloss
  def = trim(def:gsub(";%s*$", ""))
  if def == "" then return nil end
  return def:sub(1, 1):upper() .. def:sub(2) .. (def:match("[.!?]$") and "" or ".")
end

local function build_wordnet(corpus, n_words)
  local counts = {}
  for w in corpus:lower():gmatch("%a+") do counts[w] = (counts[w] or 0) + 1 end
  local idx = wordnet_index()
  local words = {}
  for w, c in pairs(counts) do
    if #w >= 3 and not STOP[w] and idx[w] then words[#words + 1] = w end
  end
  table.sort(words, function(a, b)
    if counts[a] ~= counts[b] then return counts[a] > counts[b] end
    return a < b
  end)
  local files = {}
  for pos, name in pairs(POS_FILES) do files[pos] = assert(io.open("/usr/share/wordnet/data." .. name, "rb")) end
  local out = {}
  for _, w in ipairs(words) do
    if #out >= n_words then break end
    local e = idx[w]
    local def = wordnet_gloss(files, e.pos, e.offset)
    if def then
      out[#out + 1] = {prompt = string.format('What does the %s "%s" mean?', POS_WORDS[e.pos], w),
                       completion = def, source = "wordnet/" .. POS_FILES[e.pos]}
    end
  end
  for _, f in pairs(files) do f:close() end
  return out
end

-- Splits a list into train/validation/test (80/10/10) after a seeded shuffle.
local function split3(list, seed)
  local shuffled = rng(SEED, seed):shuffle(list)
  local n = #shuffled
  local nv, nt = math.floor(n * 0.1 + 0.5), math.floor(n * 0.1 + 0.5)
  local tr, va, te = {}, {}, {}
  for i, x in ipairs(shuffled) do
    if i <= nv then va[#va + 1] = x elseif i <= nv + nt then te[#te + 1] = x else tr[#tr + 1] = x end
  end
  return tr, va, te
end

local function build_qa(corpus)
  local quiz = build_quiz()
  local wn = build_wordnet(corpus, 2400)
  local splits = {train = {}, validation = {}, test = {}}
  for k, group in ipairs({quiz, wn}) do
    local tr, va, te = split3(group, 100 + k)
    for name, part in pairs({train = tr, validation = va, test = te}) do
      for _, ex in ipairs(part) do table.insert(splits[name], ex) end
    end
  end
  for name, list in pairs(splits) do
    local lines = {}
    for i, ex in ipairs(rng(SEED, 110):shuffle(list)) do
      lines[i] = jobj({{"prompt", ex.prompt}, {"completion", ex.completion}, {"source", ex.source}})
    end
    writefile("qa/" .. name .. ".jsonl", jsonl(lines))
    log("qa/%s.jsonl: %d examples", name, #list)
  end
  log("qa: %d quiz, %d wordnet", #quiz, #wn)
end

----------------------------------------------------------------------------
-- Arithmetic: generated problems, split by operand pair

-- Every sum a + b and every difference a - b (a >= b) of operands 0..ARITH_MAX,
-- written "What is a + b?" with the answer as digits.  The split is by unordered
-- operand pair {a, b}: a pair's problems (a + b, b + a and the difference of the
-- larger and the smaller) all go to one file, so no problem of test.jsonl or
-- train.jsonl has its operands, in either order, in another file.  sft.jsonl is
-- for supervised fine-tuning, train.jsonl for GRPO's prompts, test.jsonl held out.
local ARITH_MAX = 49
local ARITH_PAIRS = {test = 70, train = 330}   -- unordered pairs; sft takes the rest

local function arith_problems(a, b)
  local out = {{string.format("What is %d + %d?", a, b), a + b, "arith/add"}}
  if a ~= b then out[#out + 1] = {string.format("What is %d + %d?", b, a), a + b, "arith/add"} end
  local hi, lo = math.max(a, b), math.min(a, b)
  out[#out + 1] = {string.format("What is %d - %d?", hi, lo), hi - lo, "arith/sub"}
  return out
end

local function build_arith()
  local pairs_list = {}
  for a = 0, ARITH_MAX do
    for b = a, ARITH_MAX do pairs_list[#pairs_list + 1] = {a, b} end
  end
  local shuffled = rng(SEED, 500):shuffle(pairs_list)
  local splits = {test = {}, train = {}, sft = {}}
  for i, ab in ipairs(shuffled) do
    local name = i <= ARITH_PAIRS.test and "test"
      or i <= ARITH_PAIRS.test + ARITH_PAIRS.train and "train" or "sft"
    for _, p in ipairs(arith_problems(ab[1], ab[2])) do table.insert(splits[name], p) end
  end
  for k, name in ipairs({"sft", "train", "test"}) do
    local lines = {}
    for i, p in ipairs(rng(SEED, 500 + k):shuffle(splits[name])) do
      lines[i] = jobj({{"prompt", p[1]}, {"completion", tostring(p[2])}, {"source", p[3]}})
    end
    writefile("arith/" .. name .. ".jsonl", jsonl(lines))
    log("arith/%s.jsonl: %d problems", name, #lines)
  end
end

----------------------------------------------------------------------------
-- npm packages

local function npm_fetch(tmp)
  local dir = tmp .. "/npm"
  sh("mkdir -p " .. dir)
  sh(string.format("cd %s && npm pack --silent sentiment@%s vader-sentiment@%s >/dev/null",
    dir, VERSIONS.sentiment, VERSIONS["vader-sentiment"]))
  sh(string.format("cd %s && mkdir -p sentiment vader && tar xzf sentiment-%s.tgz -C sentiment "
    .. "&& tar xzf vader-sentiment-%s.tgz -C vader", dir, VERSIONS.sentiment, VERSIONS["vader-sentiment"]))
  return dir .. "/sentiment/package", dir .. "/vader/package"
end

local function vader_lexicon(vdir)
  local lex = {}
  for line in io.lines(vdir .. "/vader_lexicon.txt") do
    local word, mean, _, ratings = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t%[([^%]]*)%]")
    if word then
      local r = {}
      for x in ratings:gmatch("-?%d+") do r[#r + 1] = math.tointeger(tonumber(x)) end
      if #r == 10 then lex[word] = {mean = tonumber(mean), ratings = r} end
    end
  end
  return lex
end

----------------------------------------------------------------------------
-- Sentiment pairs (UCI Sentiment Labelled Sentences, Kotzias et al. 2015)

local SOURCES = {
  {"amazon", "Product review:"}, {"imdb", "Movie review:"}, {"yelp", "Restaurant review:"},
}

local function build_sentiment(sdir, lex)
  local splits = {train = {}, validation = {}, test = {}}
  local prompts = {train = {}, test = {}}
  local stats = {}
  for si, src in ipairs(SOURCES) do
    local data = cjson.decode(readfile(sdir .. "/test/fixtures/" .. src[1] .. ".json"))
    local label_of, order = {}, {}
    for _, item in ipairs(data) do
      local cls = item.class
      if type(item.text) == "string" and (cls == 0 or cls == 1) then
        local text = trim(item.text:gsub("%s+", " "))
        if text ~= "" then
          if label_of[text] == nil then order[#order + 1] = text; label_of[text] = cls
          elseif label_of[text] ~= cls then label_of[text] = false end
        end
      end
    end
    local by_label = {[0] = {}, [1] = {}}
    for _, text in ipairs(order) do
      local cls = label_of[text]
      if cls ~= false then table.insert(by_label[math.tointeger(cls)], text) end
    end
    local parts = {}
    for cls = 0, 1 do
      local tr, va, te = split3(by_label[cls], 200 + si * 2 + cls)
      parts[cls] = {train = tr, validation = va, test = te}
    end
    for name in pairs(splits) do
      -- pair the positives and negatives of a split by rank of length, so the
      -- chosen side is not systematically longer or shorter
      local pos, neg = parts[1][name], parts[0][name]
      local function by_len(a, b) if #a ~= #b then return #a < #b end return a < b end
      table.sort(pos, by_len); table.sort(neg, by_len)
      local n = math.min(#pos, #neg)
      for i = 1, n do
        -- spread the unpaired leftovers' effect: match rank i of the shorter list
        local j = (#pos == n) and math.floor((i - 0.5) * #neg / n) + 1 or i
        local k = (#pos == n) and i or math.floor((i - 0.5) * #pos / n) + 1
        table.insert(splits[name], {prompt = src[2], chosen = " " .. pos[k], rejected = " " .. neg[j],
          source = src[1]})
      end
      stats[#stats + 1] = string.format("%s %s: %d positive, %d negative, %d pairs",
        src[1], name, #pos, #neg, n)
    end
    -- PPO prompts: sentiment-neutral openings (no VADER word) of real sentences
    for _, name in ipairs({"train", "test"}) do
      local seen = {}
      for cls = 0, 1 do
        for _, text in ipairs(parts[cls][name]) do
          local words = {}
          for w in text:gmatch("%S+") do words[#words + 1] = w end
          if #words >= 6 then
            local opening = table.concat(words, " ", 1, 3)
            local neutral = opening:match("^[%a' ]+$") ~= nil
            for w in opening:lower():gmatch("[%a']+") do
              if lex[w] then neutral = false end
            end
            if neutral and not seen[opening] then
              seen[opening] = true
              table.insert(prompts[name], {prompt = src[2] .. " " .. opening, source = src[1]})
            end
          end
        end
      end
    end
  end
  for name, list in pairs(splits) do
    local lines = {}
    for i, ex in ipairs(rng(SEED, 300):shuffle(list)) do
      lines[i] = jobj({{"prompt", ex.prompt}, {"chosen", ex.chosen}, {"rejected", ex.rejected},
        {"source", ex.source}})
    end
    writefile("sentiment/" .. name .. ".jsonl", jsonl(lines))
  end
  -- A prompt of both splits (two sentences may open alike) stays in the test
  -- split only, so no held-out prompt is ever trained on.
  local in_test, kept = {}, {}
  for _, ex in ipairs(prompts.test) do in_test[ex.prompt] = true end
  for _, ex in ipairs(prompts.train) do
    if not in_test[ex.prompt] then kept[#kept + 1] = ex end
  end
  log("sentiment: %d training prompts that are also test prompts left out", #prompts.train - #kept)
  prompts.train = kept
  for name, list in pairs(prompts) do
    table.sort(list, function(a, b) return a.prompt < b.prompt end)
    local lines = {}
    for i, ex in ipairs(list) do lines[i] = jobj({{"prompt", ex.prompt}, {"source", ex.source}}) end
    writefile("sentiment/prompts_" .. name .. ".jsonl", jsonl(lines))
    log("sentiment/prompts_%s.jsonl: %d prompts", name, #list)
  end
  for _, s in ipairs(stats) do log("sentiment: %s", s) end
end

----------------------------------------------------------------------------
-- VADER soft labels and the held-out judge

-- Panel A (ratings 1-5 of each word) makes the training labels; panel B
-- (ratings 6-10) is the judge.
local PANEL_A, PANEL_B = {1, 5}, {6, 10}

local function panel(r, which)
  return table.move(r, which[1], which[2], 1, {})
end

-- Share of rater pairs (one rating of a, one of b) that rate a above b; ties half.
local function pref(ra, rb)
  local s = 0
  for _, x in ipairs(ra) do
    for _, y in ipairs(rb) do
      if x > y then s = s + 1 elseif x == y then s = s + 0.5 end
    end
  end
  return s / (#ra * #rb)
end

local function mean(r)
  local s = 0
  for _, x in ipairs(r) do s = s + x end
  return s / #r
end

local TEMPLATES_TRAIN = {
  "The movie was", "Honestly, the food was", "My stay at the hotel was", "The concert last night was",
  "I thought the book was", "Our waiter was", "The new phone is", "This album is",
  "The weather today is", "The customer service was", "Her performance was", "The whole trip was",
}
local TEMPLATES_TEST = {"The museum was", "The game last night was", "My new neighbour is", "The lecture was"}

local BINS = {{"tie", 0.5, 0.55}, {"modest", 0.55, 0.75}, {"confident", 0.75, 1.0001}}
local function bin_of(p)
  if p < 0.55 then return 1 elseif p <= 0.75 then return 2 else return 3 end
end

local VARIANTS = {
  {name = "modest", shares = {0.10, 0.70, 0.20}},
  {name = "confident", shares = {0.10, 0.20, 0.70}},
}

local function build_vader(vdir, lex)
  -- the candidate completions: single lowercase words that are WordNet adjectives
  local adj = {}
  for line in io.lines("/usr/share/wordnet/index.adj") do
    local w = line:match("^([a-z]+) ")
    if w then adj[w] = true end
  end
  local words = {}
  for w in pairs(lex) do
    if w:match("^[a-z]+$") and #w >= 3 and adj[w] then words[#words + 1] = w end
  end
  table.sort(words)
  words = rng(SEED, 400):shuffle(words)
  local n_test = math.floor(#words * 0.2 + 0.5)
  local test_words, train_words = {}, {}
  for i, w in ipairs(words) do
    if i <= n_test then test_words[#test_words + 1] = w else train_words[#train_words + 1] = w end
  end

  local function pair_labels(a, b)
    local ra, rb = lex[a].ratings, lex[b].ratings
    return pref(panel(ra, PANEL_A), panel(rb, PANEL_A)), pref(panel(ra, PANEL_B), panel(rb, PANEL_B))
  end

  local summary = {}
  local used = {}
  local function draw(r, pool, counts_wanted, labels_from)
    local out, counts = {}, {0, 0, 0}
    local total = counts_wanted[1] + counts_wanted[2] + counts_wanted[3]
    local tries = 0
    while #out < total do
      tries = tries + 1
      if tries > 2000000 then error("vader: could not fill the label bins", 0) end
      local a, b = pool[r:int(#pool)], pool[r:int(#pool)]
      local key = a < b and a .. "|" .. b or b .. "|" .. a
      if a ~= b and not used[key] then
        local pa, pb = pair_labels(a, b)
        local p = labels_from == "B" and pb or pa
        local other = labels_from == "B" and pa or pb
        if p < 0.5 then a, b, p, other = b, a, 1 - p, 1 - other end
        local k = bin_of(p)
        if counts[k] < counts_wanted[k] then
          counts[k] = counts[k] + 1
          used[key] = true
          out[#out + 1] = {a = a, b = b, p = p, other = other}
        end
      end
    end
    return out
  end

  local function counts_for(n, shares)
    local c = {}
    local left = n
    for i = 1, 3 do
      c[i] = (i == 3) and left or math.floor(n * shares[i] + 0.5)
      left = left - c[i]
    end
    return c
  end

  local function write_pairs(rel, pairs, templates, r, extra)
    local lines = {}
    for i, x in ipairs(pairs) do
      local prompt = templates[r:int(#templates)]
      local fields = {{"prompt", prompt}, {"chosen", " " .. x.a .. "."}, {"rejected", " " .. x.b .. "."},
                      {"p", x.p}}
      if extra then for _, kv in ipairs(extra(x)) do fields[#fields + 1] = kv end end
      lines[i] = jobj(fields)
    end
    writefile(rel, jsonl(lines))
  end

  local function describe(rel, pairs)
    local n, c = #pairs, {0, 0, 0}
    local agree, sum_p = 0, 0
    for _, x in ipairs(pairs) do
      c[bin_of(x.p)] = c[bin_of(x.p)] + 1
      sum_p = sum_p + x.p
      if x.other > 0.5 then agree = agree + 1 elseif x.other == 0.5 then agree = agree + 0.5 end
    end
    local s = string.format("%s: %d pairs; p in [0.5,0.55): %.1f%%, [0.55,0.75]: %.1f%%, (0.75,1]: %.1f%%; "
      .. "mean p %.3f; other panel agrees on %.1f%%", rel, n, 100 * c[1] / n, 100 * c[2] / n,
      100 * c[3] / n, sum_p / n, 100 * agree / n)
    summary[#summary + 1] = s
    log("vader: %s", s)
  end

  -- held-out test pairs first (test words, judge-panel labels, natural mix)
  do
    local r = rng(SEED, 410)
    local natural = {}
    local pairs_ = {}
    while #pairs_ < 400 do
      local a, b = test_words[r:int(#test_words)], test_words[r:int(#test_words)]
      local key = a < b and a .. "|" .. b or b .. "|" .. a
      if a ~= b and not used[key] then
        used[key] = true
        local pa, pb = pair_labels(a, b)
        local p, other = pb, pa
        if p < 0.5 then a, b, p, other = b, a, 1 - p, 1 - other end
        pairs_[#pairs_ + 1] = {a = a, b = b, p = p, other = other}
      end
    end
    natural = pairs_
    write_pairs("vader/test.jsonl", natural, TEMPLATES_TEST, rng(SEED, 411))
    describe("vader/test.jsonl (labels: judge panel)", natural)
  end

  -- the natural distribution of training-panel labels over random pairs
  do
    local r, c, n = rng(SEED, 420), {0, 0, 0}, 20000
    for _ = 1, n do
      local a, b = train_words[r:int(#train_words)], train_words[r:int(#train_words)]
      if a ~= b then
        local pa = pair_labels(a, b)
        if pa < 0.5 then pa = 1 - pa end
        c[bin_of(pa)] = c[bin_of(pa)] + 1
      end
    end
    local t = c[1] + c[2] + c[3]
    local s = string.format("random train-word pairs (panel A): [0.5,0.55): %.1f%%, [0.55,0.75]: %.1f%%, (0.75,1]: %.1f%%",
      100 * c[1] / t, 100 * c[2] / t, 100 * c[3] / t)
    summary[#summary + 1] = s
    log("vader: %s", s)
  end

  for vi, v in ipairs(VARIANTS) do
    local r = rng(SEED, 430 + vi)
    local train = draw(r, train_words, counts_for(2000, v.shares), "A")
    local valid = draw(r, train_words, counts_for(200, v.shares), "A")
    -- the two variants draw their pairs independently, but never reuse a pair
    -- within one variant; across variants pairs may repeat
    write_pairs("vader/" .. v.name .. "/train.jsonl", train, TEMPLATES_TRAIN, rng(SEED, 440 + vi))
    write_pairs("vader/" .. v.name .. "/validation.jsonl", valid, TEMPLATES_TRAIN, rng(SEED, 450 + vi))
    describe("vader/" .. v.name .. "/train.jsonl", train)
    describe("vader/" .. v.name .. "/validation.jsonl", valid)
    -- release this variant's pairs so the next variant can draw from all pairs
    -- except the test pairs
    for _, x in ipairs(train) do used[x.a < x.b and x.a .. "|" .. x.b or x.b .. "|" .. x.a] = nil end
    for _, x in ipairs(valid) do used[x.a < x.b and x.a .. "|" .. x.b or x.b .. "|" .. x.a] = nil end
  end

  -- prompts for PPO / generation
  for name, t in pairs({train = TEMPLATES_TRAIN, test = TEMPLATES_TEST}) do
    local lines = {}
    for i, p in ipairs(t) do lines[i] = jobj({{"prompt", p}}) end
    writefile("vader/prompts_" .. name .. ".jsonl", jsonl(lines))
  end

  -- the judge: panel B's ratings of every alphabetic lexicon entry
  local entries = {}
  for w in pairs(lex) do
    if w:match("^[a-z][a-z']*$") then entries[#entries + 1] = w end
  end
  table.sort(entries)
  local lines = {"# word\tjudge_mean\tjudge_ratings (VADER ratings 6-10; never used for training labels)"}
  for _, w in ipairs(entries) do
    local rb = panel(lex[w].ratings, PANEL_B)
    local m = string.format("%.1f", mean(rb))
    lines[#lines + 1] = w .. "\t" .. m .. "\t" .. table.concat(rb, ",")
  end
  writefile("vader/judge.tsv", table.concat(lines, "\n") .. "\n")
  -- the words of each split, for analysis
  table.sort(train_words); table.sort(test_words)
  writefile("vader/words_train.txt", table.concat(train_words, "\n") .. "\n")
  writefile("vader/words_test.txt", table.concat(test_words, "\n") .. "\n")
  log("vader: %d candidate words (%d train, %d test), judge lexicon of %d entries",
    #words, #train_words, #test_words, #entries)
  return summary
end

----------------------------------------------------------------------------
-- Licences and manifest

local function copy_licences(sdir, vdir)
  local function put(rel, src) writefile(rel, readfile(src)) end
  put("LICENSES/janeaustenr.txt", "/usr/share/doc/r-cran-janeaustenr/copyright")
  put("LICENSES/bsdgames.txt", "/usr/share/doc/bsdgames/copyright")
  put("LICENSES/wordnet.txt", "/usr/share/doc/wordnet-base/copyright")
  local s_licence = exists(sdir .. "/LICENSE") and readfile(sdir .. "/LICENSE")
    or ("sentiment " .. VERSIONS.sentiment .. ": package.json declares \"license\": \"MIT\"\n")
  writefile("LICENSES/sentiment.txt", s_licence)
  writefile("LICENSES/vader-sentiment.txt", readfile(vdir .. "/NOTICE") .. "\n" .. readfile(vdir .. "/LICENSE"))
end

-- The manifest lists the files written now, and keeps the lines of files an
-- earlier build wrote that this one did not (a build of some steps only).
local function manifest()
  local rows = {}
  if exists(DATA .. "/MANIFEST.tsv") then
    for line in io.lines(DATA .. "/MANIFEST.tsv") do
      local rel = line:match("^([^#\t][^\t]*)\t")
      if rel and exists(DATA .. "/" .. rel) then rows[rel] = line end
    end
  end
  for _, rel in ipairs(written) do
    local path = DATA .. "/" .. rel
    local text = readfile(path)
    local _, nl = text:gsub("\n", "")
    local sum = capture("sha256sum '" .. path .. "'"):match("^(%x+)")
    rows[rel] = string.format("%s\t%d\t%d\t%s", rel, #text, nl, sum)
  end
  local files = {}
  for rel in pairs(rows) do files[#files + 1] = rel end
  table.sort(files)
  local lines = {"# file\tbytes\tlines\tsha256 (written by data/build.lua)"}
  for _, rel in ipairs(files) do lines[#lines + 1] = rows[rel] end
  local f = assert(io.open(DATA .. "/MANIFEST.tsv", "wb"))
  f:write(table.concat(lines, "\n"), "\n")
  f:close()
end

----------------------------------------------------------------------------

local function main()
  if arg[1] == "arith" then   -- the generated step alone: it needs no package
    build_arith()
    manifest()
    log("done: %d files under %s", #written, DATA)
    return
  elseif arg[1] ~= nil then
    error("data/build.lua: unknown step '" .. arg[1] .. "' (none: every dataset; arith: the arithmetic problems alone)", 0)
  end
  prerequisites()
  local tmp = trim(capture("mktemp -d"))
  local ok, err = pcall(function()
    local corpus = build_austen(tmp)
    build_qa(corpus)
    build_arith()
    local sdir, vdir = npm_fetch(tmp)
    local lex = vader_lexicon(vdir)
    build_sentiment(sdir, lex)
    local summary = build_vader(vdir, lex)
    writefile("vader/STATS.txt", table.concat(summary, "\n") .. "\n")
    copy_licences(sdir, vdir)
    manifest()
  end)
  sh("rm -rf '" .. tmp .. "'")
  if not ok then error(err, 0) end
  log("done: %d files under %s", #written, DATA)
end

main()
