-- lualign.tokenizer: GPT-2 exactness against ids computed by npm packages
-- (tests/fixtures/gpt2_ids.json), byte round-trips, the byte tokenizer, the
-- trainer, special tokens, the chat template, saving, and error paths.

local la = require "lualign"
local cjson = require "cjson"

local T = la.tokenizer
local FIXTURE = "tests/fixtures/gpt2_ids.json"

local function ints(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = math.tointeger(v) end
  return out
end

local h = require "helpers"
local tmpdir, write, read = h.tmpdir, h.write, h.read

-- A deterministic generator for random bytes.
local function lcg(seed)
  local s = seed
  return function(n)
    s = (s * 1103515245 + 12345) % 2147483648
    return s % n
  end
end

local function errmsg(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

local gpt2
local function get_gpt2()
  gpt2 = gpt2 or T.load("gpt2")
  return gpt2
end

local fixture
local function get_fixture()
  fixture = fixture or cjson.decode(read(FIXTURE))
  return fixture
end

local function check_fixture(tok)
  local fx = get_fixture()
  for i, c in ipairs(fx.cases) do
    local got = tok:encode(c.text, {split_special_tokens = c.split_special})
    assert.are.same(ints(c.ids), got, string.format("case %d: %q", i, c.text))
    assert.are.equal(c.text, tok:decode(got), string.format("round trip of case %d", i))
  end
  return #fx.cases
end

describe("GPT-2 tokenizer", function()
  it("loads the bundled files with GPT-2's sizes and roles", function()
    local tok = get_gpt2()
    assert.are.equal(50257, tok.vocab_size)
    assert.are.equal(50000, tok:num_merges())
    assert.are.equal(50256, tok.bos_id)
    assert.are.equal(50256, tok.eos_id)
    assert.is_nil(tok.pad_id)
    assert.are.equal(50256, tok:token_to_id("<|endoftext|>"))
    assert.is_true(tok:is_special(50256))
  end)

  it("gives exactly the ids of the npm reference on every fixture text", function()
    local fx = get_fixture()
    assert.is_truthy(fx.source:match("gpt%-3%-encoder"))
    assert.is_true(check_fixture(get_gpt2()) >= 300)
  end)

  it("gives the same ids with the heap merge loop as with the scan", function()
    local tok = T.load("data/gpt2")
    require("lualign.core").bpe.set_heap_threshold(tok._bpe, 0)      -- every word through the heap
    check_fixture(tok)
    require("lualign.core").bpe.set_heap_threshold(tok._bpe, 1e9)    -- every word through the scan
    check_fixture(tok)
    -- long repetitive words, where the two loops could most easily part ways
    local r = lcg(7)
    for _ = 1, 200 do
      local n, chars = 1 + r(300), {"a", "b", "aa", "ab", "=", " ", "1", "e", "r"}
      local parts = {}
      for k = 1, n do parts[k] = chars[1 + r(#chars)] end
      local s = table.concat(parts)
      require("lualign.core").bpe.set_heap_threshold(tok._bpe, 0)
      local h = tok:encode(s)
      require("lualign.core").bpe.set_heap_threshold(tok._bpe, 1e9)
      assert.are.same(h, tok:encode(s), s)
    end
  end)

  it("loads a directory, and the tokenizer.json it saves, to the same ids", function()
    local d = tmpdir()
    local tok = get_gpt2()
    local path = tok:save(d)
    assert.are.equal(d .. "/tokenizer.json", path)
    local j = cjson.decode(read(path))
    assert.are.equal("BPE", j.model.type)
    assert.are.equal(50000, #j.model.merges)
    assert.are.equal("Ġ t", j.model.merges[1])
    local back = T.load(path)
    assert.are.equal(50257, back.vocab_size)
    assert.are.equal(50256, back.eos_id)
    check_fixture(back)
    local viadir = T.load(d)
    assert.are.equal(50257, viadir.vocab_size)
  end)

  it("never splits <|endoftext|> unless asked to", function()
    local tok = get_gpt2()
    assert.are.same({64, 50256, 65}, tok:encode("a<|endoftext|>b"))
    assert.are.same({50256, 50256}, tok:encode("<|endoftext|><|endoftext|>"))
    assert.are.same({27, 91, 437, 1659, 5239, 91, 29}, tok:encode("<|endoftext|>", {split_special_tokens = true}))
    assert.are.same({50256, 15496, 50256}, tok:encode("Hello", {add_special_tokens = true}))
    assert.are.same({15496}, tok:encode("Hello", {add_special_tokens = false}))
    assert.are.equal("ab", tok:decode({64, 50256, 65}, {skip_special_tokens = true}))
    assert.are.equal("a<|endoftext|>b", tok:decode({64, 50256, 65}))
  end)

  it("spells tokens as the vocabulary does and gives their bytes", function()
    local tok = get_gpt2()
    assert.are.equal(995, tok:token_to_id("Ġworld"))
    assert.are.equal("Ġworld", tok:id_to_token(995))
    assert.are.equal(" world", tok:id_to_bytes(995))
    assert.is_nil(tok:token_to_id(" world"))
    assert.is_nil(tok:id_to_token(50257))
    assert.is_nil(tok:id_to_token(-1))
    assert.are.equal("!", tok:id_to_token(0))
  end)

  it("classes U+0085 as space and U+FEFF as neither space, letter nor digit, as Python's regex does", function()
    local tok = get_gpt2()
    assert.are.same({"a", "\u{FEFF}", " b"}, tok:pretokenize("a\u{FEFF} b"))
    assert.are.same({"a", " \u{FEFF}", "b"}, tok:pretokenize("a \u{FEFF}b"))
    assert.are.same({"a", "\u{85}", " b"}, tok:pretokenize("a\u{85} b"))
    assert.are.same({"x", "\u{85}", "\u{85}", "y"}, tok:pretokenize("x\u{85}\u{85}y"))
    assert.are.same({"a", "\u{2028}\u{2028}", " b"}, tok:pretokenize("a\u{2028}\u{2028} b"))
  end)

  it("splits text as GPT-2's regex does", function()
    local tok = get_gpt2()
    assert.are.same({"Hello", ",", " world", "!", " It", "'s", " 42", "   ", " x", "\n", "\n", "y", "  "},
      tok:pretokenize("Hello, world! It's 42    x\n\ny  "))
    -- contractions are lower case only, as in GPT-2
    assert.are.same({"I", "'", "M", " don", "'t"}, tok:pretokenize("I'M don't"))
  end)
end)

describe("invalid UTF-8 and arbitrary bytes", function()
  it("makes each run of invalid bytes a pre-token of its own", function()
    local tok = get_gpt2()
    assert.are.same({"ab", "\xff\xfe", "cd", " ", "\x80", "é"}, tok:pretokenize("ab\xff\xfecd \x80é"))
    -- a truncated character, then an overlong form and an encoded surrogate (one run)
    assert.are.same({"a", "\xc3", " b", "\xc0\xaf\xed\xa0\x80", "!"}, tok:pretokenize("a\xc3 b\xc0\xaf\xed\xa0\x80!"))
  end)

  it("encodes invalid bytes as the concatenation of their pieces' tokens", function()
    local tok = get_gpt2()
    local ids = tok:encode("ab\xff\xfecd")
    local expect = {}
    for _, p in ipairs({"ab", "\xff\xfe", "cd"}) do
      for _, id in ipairs(tok:encode(p)) do expect[#expect + 1] = id end
    end
    assert.are.same(expect, ids)
    assert.are.equal("ab\xff\xfecd", tok:decode(ids))
  end)

  it("round-trips random byte strings through every tokenizer kind", function()
    local toks = {get_gpt2(), T.byte(), T.train(read("README.md"), {vocab_size = 400})}
    local r = lcg(42)
    for _ = 1, 300 do
      local n = r(120)
      local b = {}
      for k = 1, n do b[k] = string.char(r(256)) end
      local s = table.concat(b)
      for _, tok in ipairs(toks) do
        local ids = tok:encode(s, {split_special_tokens = true})
        for _, id in ipairs(ids) do assert.is_true(id >= 0 and id < tok.vocab_size) end
        assert.are.equal(s, tok:decode(ids))
      end
    end
  end)
end)

describe("byte tokenizer", function()
  it("maps bytes to ids 0..255 and puts special tokens after them", function()
    local tok = T.byte()
    assert.are.equal(256 + #T.DEFAULT_SPECIAL_TOKENS, tok.vocab_size)
    assert.are.same({104, 105, 0, 255}, tok:encode("hi\0\xff"))
    assert.are.equal(256, tok:token_to_id("<|endoftext|>"))
    assert.are.equal(256, tok.eos_id)
    assert.are.equal(256, tok.bos_id)
    assert.are.equal(257, tok.pad_id)
    assert.are.same({104, 256, 105}, tok:encode("h<|endoftext|>i"))
    assert.are.equal("hi", tok:decode({104, 256, 105}, {skip_special_tokens = true}))
  end)

  it("takes its own special tokens and roles", function()
    local tok = T.byte({special_tokens = {"<s>", "</s>", "<pad>", "<|user|>"}})
    assert.are.equal(260, tok.vocab_size)
    assert.are.equal(256, tok.bos_id)
    assert.are.equal(257, tok.eos_id)
    assert.are.equal(258, tok.pad_id)
    local none = T.byte({special_tokens = {}})
    assert.are.equal(256, none.vocab_size)
    assert.is_nil(none.bos_id)
    local named = T.byte({special_tokens = {"[A]", "[B]"}, eos_token = "[B]", pad_token = "[A]"})
    assert.are.equal(257, named.eos_id)
    assert.are.equal(256, named.pad_id)
    assert.is_nil(named.bos_id)
  end)

  it("saves and loads back", function()
    local d = tmpdir()
    local tok = T.byte()
    tok:save(d .. "/byte.json")
    local back = T.load(d .. "/byte.json")
    assert.are.equal(tok.vocab_size, back.vocab_size)
    local s = "héllo <|user|> wörld\n\xff"
    assert.are.same(tok:encode(s), back:encode(s))
    assert.are.equal(tok.pad_id, back.pad_id)
  end)
end)

describe("BPE trainer", function()
  local corpus = {}
  for i = 1, 40 do
    corpus[#corpus + 1] = string.format("Sample %d: the cat sat on the mat, and the dog didn't. <|endoftext|>"
      .. "Numbers 12345 and words like tokenizer, tokenization, tokens.\n", i)
  end

  it("learns merges up to vocab_size, special tokens included", function()
    local tok = T.train(corpus, {vocab_size = 320})
    assert.are.equal(320, tok.vocab_size)
    assert.are.equal(320 - 6, tok:token_to_id("<|endoftext|>"))
    for i, s in ipairs(T.DEFAULT_SPECIAL_TOKENS) do
      assert.are.equal(320 - 6 + i - 1, tok:token_to_id(s))
      assert.is_true(tok:is_special(320 - 6 + i - 1))
    end
    assert.are.equal(tok:token_to_id("<|endoftext|>"), tok.eos_id)
    assert.are.equal(tok:token_to_id("<|pad|>"), tok.pad_id)
    -- the most frequent word is a single token
    assert.are.equal(1, #tok:encode(" the"))
  end)

  it("never learns from the text of special tokens", function()
    local tok = T.train(corpus, {vocab_size = 600, min_frequency = 1})
    for id = 256, tok.vocab_size - 1 do
      if not tok:is_special(id) then
        local b = tok:id_to_bytes(id)
        assert.is_nil(b:find("endof", 1, true), b)
        assert.is_nil(b:find("<|", 1, true), b)
      end
    end
  end)

  it("is deterministic, and breaks ties by the smaller pair of ids", function()
    local a = T.train(corpus, {vocab_size = 400})
    local b = T.train(corpus, {vocab_size = 400})
    for id = 0, a.vocab_size - 1 do assert.are.equal(a:id_to_token(id), b:id_to_token(id)) end
    -- "ba ab": the pairs (b,a), (' ',a), (a,b) all occur once
    local t = T.train("ba ab", {vocab_size = 259, min_frequency = 1, special_tokens = {}})
    assert.are.equal("Ġa", t:id_to_token(256))
    assert.are.equal("ba", t:id_to_token(257))
    assert.are.equal("Ġab", t:id_to_token(258))
  end)

  it("stops when no pair is frequent enough", function()
    local t = T.train("abab", {vocab_size = 1000, special_tokens = {}})
    assert.are.equal(257, t.vocab_size)            -- only (a, b) occurs twice
    assert.are.equal("ab", t:id_to_token(256))
    local t1 = T.train("abab", {vocab_size = 1000, min_frequency = 1, special_tokens = {}})
    assert.are.equal(258, t1.vocab_size)
    assert.are.equal("abab", t1:id_to_token(257))
  end)

  it("reuses a token when two merges spell the same bytes", function()
    -- "abc" can be built as (ab)c or a(bc): both merges map to one token.
    local t = T.train({"abc abc abc xab xab bcy bcy bcy"}, {vocab_size = 300, min_frequency = 1, special_tokens = {}})
    local seen = {}
    for id = 0, t.vocab_size - 1 do
      local s = t:id_to_token(id)
      assert.is_nil(seen[s], "duplicate token " .. s)
      seen[s] = true
    end
  end)

  it("saves a tokenizer.json that loads back to the same encoding", function()
    local d = tmpdir()
    local tok = T.train(corpus, {vocab_size = 350})
    tok:save(d .. "/tokenizer.json")
    local back = T.load(d)
    assert.are.equal(tok.vocab_size, back.vocab_size)
    assert.are.equal(tok.eos_id, back.eos_id)
    assert.are.equal(tok.pad_id, back.pad_id)
    for _, s in ipairs(corpus) do assert.are.same(tok:encode(s), back:encode(s)) end
    local j = cjson.decode(read(d .. "/tokenizer.json"))
    assert.are.equal(6, #j.added_tokens)
    assert.are.equal(tok:num_merges(), #j.model.merges)
    assert.are.equal(tok.vocab_size - 6 - 256, #j.model.merges)   -- no two merges spell the same token here
  end)

  it("rejects impossible settings", function()
    assert.truthy(errmsg(T.train, "abc", {vocab_size = 200}):find("too small", 1, true))
    assert.truthy(errmsg(T.train, {"abc", 5}, {vocab_size = 300}):find("text 2", 1, true))
    assert.truthy(errmsg(T.train, 42):find("string or a list", 1, true))
  end)
end)

describe("special tokens", function()
  it("adds new ones after the vocabulary and marks existing ones", function()
    local tok = T.load("gpt2")
    assert.are.equal(3, tok:add_special_tokens({"<|user|>", "<|assistant|>", "<|end|>"}))
    assert.are.equal(50260, tok.vocab_size)
    assert.are.equal(50257, tok:token_to_id("<|user|>"))
    assert.are.equal(0, tok:add_special_tokens({"<|user|>"}))
    assert.are.same({50257, 15496, 50259}, tok:encode("<|user|>Hello<|end|>"))
    -- an existing plain token becomes special and is no longer merged into words
    assert.are.equal(0, tok:add_special_tokens("Hello"))
    assert.is_true(tok:is_special(15496))
    assert.are.same({15496, 995}, tok:encode("Hello world"))
    assert.are.same({15496, 995}, tok:encode("Hello world"))
    assert.are.equal(1, tok:add_special_tokens({"<pad>"}))
    assert.are.equal(50260, tok.pad_id)
  end)

  it("matches the longest special token where two start at the same place", function()
    local tok = T.byte({special_tokens = {"<a>", "<a><b>"}})
    assert.are.same({257, 120}, tok:encode("<a><b>x"))
    assert.are.same({256, 60}, tok:encode("<a><"))
  end)
end)

describe("chat template", function()
  local function chat_tok()
    local tok = T.load("gpt2")
    tok:add_special_tokens({"<|system|>", "<|user|>", "<|assistant|>", "<|end|>"})
    return tok
  end
  local messages = {
    {role = "system", content = "Be brief."},
    {role = "user", content = "Hi!"},
    {role = "assistant", content = "Hello there."},
    {role = "user", content = "Bye."},
    {role = "assistant", content = "Goodbye!"},
  }

  it("lays out each message as <|role|> newline content <|end|> newline", function()
    local tok = chat_tok()
    local ids, mask = tok:apply_chat_template(messages)
    assert.are.equal(#ids, #mask)
    local text = tok:chat_text(messages)
    assert.are.equal("<|system|>\nBe brief.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello there.<|end|>\n"
      .. "<|user|>\nBye.<|end|>\n<|assistant|>\nGoodbye!<|end|>\n", text)
    assert.are.equal(text, tok:decode(ids))
    assert.are.same(tok:encode(text), ids)
  end)

  it("masks exactly the assistant contents and their end tokens", function()
    local tok = chat_tok()
    local ids, mask = tok:apply_chat_template(messages)
    local masked = {}
    for i, id in ipairs(ids) do
      assert.is_true(mask[i] == 0 or mask[i] == 1)
      if mask[i] == 1 then masked[#masked + 1] = id end
    end
    local expect = {}
    for _, s in ipairs({"Hello there.", "<|end|>", "Goodbye!", "<|end|>"}) do
      for _, id in ipairs(tok:encode(s)) do expect[#expect + 1] = id end
    end
    assert.are.same(expect, masked)
    -- the masked tokens are the two assistant turns, each ending with <|end|>
    local end_id = tok:token_to_id("<|end|>")
    local ends = 0
    for i = 1, #ids do if mask[i] == 1 and ids[i] == end_id then ends = ends + 1 end end
    assert.are.equal(2, ends)
  end)

  it("appends the assistant header for generation", function()
    local tok = chat_tok()
    local ids, mask = tok:apply_chat_template({{role = "user", content = "Hi"}}, {add_generation_prompt = true})
    local n = #ids
    assert.are.equal(tok:token_to_id("<|assistant|>"), ids[n - 1])
    assert.are.equal(198, ids[n])
    for i = 1, n do assert.are.equal(0, mask[i]) end
    assert.are.equal("<|user|>\nHi<|end|>\n<|assistant|>\n", tok:decode(ids))
  end)

  it("works with the default special tokens of byte and trained tokenizers", function()
    for _, tok in ipairs({T.byte(), T.train(read("README.md"), {vocab_size = 300})}) do
      local ids, mask = tok:apply_chat_template(messages, {add_generation_prompt = true})
      assert.are.equal(#ids, #mask)
      assert.are.equal(tok:chat_text(messages, {add_generation_prompt = true}), tok:decode(ids))
    end
  end)

  it("recognises special tokens inside contents unless asked not to", function()
    local tok = chat_tok()
    local msgs = {{role = "user", content = "a<|end|>b"}}
    local ids = tok:apply_chat_template(msgs)
    assert.are.same(tok:encode("<|user|>\na<|end|>b<|end|>\n"), ids)
    local safe = tok:apply_chat_template(msgs, {split_special_tokens = true})
    assert.are.equal(#ids - 1 + #tok:encode("<|end|>", {split_special_tokens = true}), #safe)
    assert.are.equal(tok:chat_text(msgs), tok:decode(safe))
  end)

  it("explains what is missing or malformed", function()
    local tok = T.load("gpt2")
    local e = errmsg(tok.apply_chat_template, tok, {{role = "user", content = "x"}})
    assert.truthy(e:find("<|end|>", 1, true), e)
    assert.truthy(e:find("add_special_tokens", 1, true), e)
    local tok2 = chat_tok()
    e = errmsg(tok2.apply_chat_template, tok2, {{role = "tool", content = "x"}})
    assert.truthy(e:find("message 1", 1, true) and e:find("<|tool|>", 1, true), e)
    e = errmsg(tok2.apply_chat_template, tok2, {{role = "user"}})
    assert.truthy(e:find("message 1", 1, true), e)
    e = errmsg(tok2.apply_chat_template, tok2, "hello")
    assert.truthy(e:find("list", 1, true), e)
  end)
end)

describe("decode", function()
  it("takes 1-d integer tensors, contiguous or not", function()
    local tok = get_gpt2()
    local ids = tok:encode("Hello world, again")
    assert.are.equal("Hello world, again", tok:decode(la.tensor(ids)))
    assert.are.equal("Hello world, again", tok:decode(la.tensor(ids, "int32")))
    local two = la.tensor({ids, ids})
    assert.are.equal("Hello world, again", tok:decode(two:select(1, 2)))
    local col = la.tensor({{15496, 1}, {995, 2}})
    assert.are.equal("Hello world", tok:decode(col:select(2, 1)))
    assert.are.equal("", tok:decode({}))
  end)

  it("rejects bad ids with their position", function()
    local tok = get_gpt2()
    local e = errmsg(tok.decode, tok, {15496, 50257})
    assert.truthy(e:find("id 50257 at position 2 is out of range", 1, true), e)
    e = errmsg(tok.decode, tok, {-1})
    assert.truthy(e:find("id -1 at position 1", 1, true), e)
    e = errmsg(tok.decode, tok, {1, 2.5})
    assert.truthy(e:find("ids[2]", 1, true), e)
    e = errmsg(tok.decode, tok, {1, "x"})
    assert.truthy(e:find("ids[2]", 1, true), e)
    e = errmsg(tok.decode, tok, la.tensor({1.0, 2.0}))
    assert.truthy(e:find("integer tensor", 1, true), e)
    e = errmsg(tok.decode, tok, la.tensor({{1, 2}}))
    assert.truthy(e:find("1-d", 1, true), e)
    e = errmsg(tok.decode, tok, la.tensor({70000}))
    assert.truthy(e:find("out of range", 1, true), e)
    e = errmsg(tok.decode, tok, "abc")
    assert.truthy(e:find("list of ids", 1, true), e)
  end)
end)

describe("loading errors", function()
  it("names a missing file or directory", function()
    local e = errmsg(T.load, "/nonexistent/tok.json")
    assert.truthy(e:find("/nonexistent/tok.json", 1, true), e)
    local d = tmpdir()
    e = errmsg(T.load, d)
    assert.truthy(e:find("neither tokenizer.json nor encoder.json", 1, true), e)
    write(d .. "/encoder.json", '{"a": 0}')
    e = errmsg(T.load, d)
    assert.truthy(e:find("vocab.bpe", 1, true), e)
  end)

  it("names the file of malformed JSON", function()
    local d = tmpdir()
    write(d .. "/tokenizer.json", '{"model": {"type": "BPE", "vocab": {"a": 0,}')
    local e = errmsg(T.load, d .. "/tokenizer.json")
    assert.truthy(e:find(d .. "/tokenizer.json", 1, true) and e:find("malformed JSON", 1, true), e)
    write(d .. "/encoder.json", "[1, 2")
    write(d .. "/vocab.bpe", "#version: 0.2\n")
    os.remove(d .. "/tokenizer.json")
    e = errmsg(T.load, d)
    assert.truthy(e:find(d .. "/encoder.json", 1, true) and e:find("malformed JSON", 1, true), e)
  end)

  it("gives the line of a bad merges line", function()
    local d = tmpdir()
    write(d .. "/encoder.json", '{"a": 0, "b": 1, "ab": 2, "c": 3}')
    write(d .. "/vocab.bpe", "#version: 0.2\na b\nab\n")
    local e = errmsg(T.load, d)
    assert.truthy(e:find(d .. "/vocab.bpe:3:", 1, true), e)
    write(d .. "/vocab.bpe", "#version: 0.2\na b\nab c\n")
    e = errmsg(T.load, d)
    assert.truthy(e:find(d .. "/vocab.bpe:3:", 1, true) and e:find("'abc'", 1, true), e)
    write(d .. "/vocab.bpe", "a b\nx y\n")
    e = errmsg(T.load, d)
    assert.truthy(e:find("vocab.bpe:2:", 1, true) and e:find("'x'", 1, true), e)
  end)

  it("checks the vocabulary's ids", function()
    local d = tmpdir()
    write(d .. "/encoder.json", '{"a": 0, "b": 2}')
    write(d .. "/vocab.bpe", "")
    local e = errmsg(T.load, d)
    assert.truthy(e:find("id 1 is missing", 1, true), e)
    write(d .. "/encoder.json", '{"a": 0, "b": 0.5}')
    e = errmsg(T.load, d)
    assert.truthy(e:find("not a non-negative integer", 1, true), e)
  end)

  it("refuses tokenizer.json features it does not implement", function()
    local d = tmpdir()
    local base = '{"pre_tokenizer": {"type": "ByteLevel"}, "model": %s}'
    write(d .. "/t.json", base:format('{"type": "WordPiece", "vocab": {}}'))
    assert.truthy(errmsg(T.load, d .. "/t.json"):find("WordPiece", 1, true))
    write(d .. "/t.json", base:format('{"type": "Unigram", "vocab": []}'))
    assert.truthy(errmsg(T.load, d .. "/t.json"):find("model type Unigram is not supported", 1, true))
    write(d .. "/t.json", '{"normalizer": {"type": "Precompiled"}, "pre_tokenizer": {"type": "ByteLevel"}, '
      .. '"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}')
    assert.truthy(errmsg(T.load, d .. "/t.json"):find("normalizer Precompiled is not supported", 1, true))
    write(d .. "/t.json", '{"pre_tokenizer": {"type": "BertPreTokenizer"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}')
    assert.truthy(errmsg(T.load, d .. "/t.json"):find("pre-tokenizer BertPreTokenizer is not supported", 1, true))
    write(d .. "/t.json", '{"decoder": {"type": "WordPiece"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}')
    assert.truthy(errmsg(T.load, d .. "/t.json"):find("decoder WordPiece is not supported", 1, true))
    write(d .. "/t.json", '{"model": {"type": "BPE", "dropout": 0.1, "vocab": {"a": 0}, "merges": []}}')
    assert.truthy(errmsg(T.load, d .. "/t.json"):find("BPE dropout (model.dropout = 0.1) is a training-time option", 1, true))
    write(d .. "/t.json", '{"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways"}, '
      .. '"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}')
    assert.truthy(errmsg(T.load, d .. "/t.json"):find("behavior Sideways is not one of", 1, true))
    write(d .. "/t.json", '{"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}')
    local e = errmsg(T.load, d .. "/t.json")
    assert.truthy(e:find("model.merges[1]", 1, true) and e:find("'ab'", 1, true), e)
    write(d .. "/t.json", '{"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["ab"]}}')
    e = errmsg(T.load, d .. "/t.json")
    assert.truthy(e:find("model.merges[1]", 1, true), e)
  end)
end)

describe("Hugging Face tokenizer.json", function()
  -- A small byte-level vocabulary written the way tokenizers does.
  local function hf_json(merges_json, extra)
    local spell = T._byte_spellings()
    local vocab = {}
    for i, s in ipairs(spell) do vocab[#vocab + 1] = string.format("%q: %d", s, i - 1) end
    vocab[#vocab + 1] = '"Ġt": 256'
    vocab[#vocab + 1] = '"he": 257'
    vocab[#vocab + 1] = '"Ġthe": 258'
    return '{"version": "1.0", "added_tokens": [{"id": 259, "content": "<|im_end|>", "special": true}], '
      .. '"normalizer": null, "decoder": {"type": "ByteLevel"}, '
      .. (extra or '"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}')
      .. ', "model": {"type": "BPE", "vocab": {' .. table.concat(vocab, ", ") .. '}, "merges": ' .. merges_json .. '}}'
  end

  it("reads merges as \"a b\" strings and as pairs, and added tokens as specials", function()
    local d = tmpdir()
    for _, merges in ipairs({'["Ġ t", "h e", "Ġt he"]', '[["Ġ", "t"], ["h", "e"], ["Ġt", "he"]]'}) do
      write(d .. "/tokenizer.json", hf_json(merges))
      local tok = T.load(d .. "/tokenizer.json")
      assert.are.equal(260, tok.vocab_size)
      assert.are.same({258, 258, 259, 116}, tok:encode(" the the<|im_end|>t"))
      assert.is_true(tok:is_special(259))
    end
  end)

  it("honours add_prefix_space and a Split regex", function()
    local d = tmpdir()
    write(d .. "/tokenizer.json", hf_json('["Ġ t", "h e", "Ġt he"]',
      '"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": true}'))
    local tok = T.load(d .. "/tokenizer.json")
    assert.are.same({258}, tok:encode("the"))
    write(d .. "/tokenizer.json", hf_json('["Ġ t", "h e", "Ġt he"]',
      '"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "[a-z]"}, '
      .. '"behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "use_regex": false}]}'))
    tok = T.load(d .. "/tokenizer.json")
    -- every letter is its own piece: no merge can apply
    assert.are.same({"t", "h", "e", " ", "x"}, tok:pretokenize("the x"))
    assert.are.same({116, 104, 101}, tok:encode("the"))
    -- the pattern survives a save
    tok:save(d .. "/again.json")
    local back = T.load(d .. "/again.json")
    assert.are.same({"t", "h", "e", " ", "x"}, back:pretokenize("the x"))
  end)

  it("takes roles from tokenizer_config.json beside it", function()
    local d = tmpdir()
    write(d .. "/tokenizer.json", hf_json('[]'))
    write(d .. "/tokenizer_config.json", '{"eos_token": "<|im_end|>", "pad_token": {"content": "<|im_end|>"}, "bos_token": null}')
    local tok = T.load(d)
    assert.are.equal(259, tok.eos_id)
    assert.are.equal(259, tok.pad_id)
    assert.is_nil(tok.bos_id)
  end)

  it("writes roles that names alone would not give back", function()
    local d = tmpdir()
    local tok = T.byte({special_tokens = {"[X]", "[Y]"}, eos_token = "[Y]"})
    tok:save(d .. "/tokenizer.json")
    local back = T.load(d)
    assert.are.equal(257, back.eos_id)
    assert.is_nil(back.bos_id)
  end)
end)

describe("encode arguments", function()
  it("rejects what is not a string", function()
    local tok = T.byte()
    assert.truthy(errmsg(tok.encode, tok, 42):find("expected a string", 1, true))
    assert.truthy(errmsg(tok.encode, tok, nil):find("expected a string", 1, true))
  end)

  it("handles long texts and the cache across calls", function()
    local tok = get_gpt2()
    local text = read("README.md")
    local once = tok:encode(text)
    require("lualign.core").bpe.clear_cache(tok._bpe)
    assert.are.same(once, tok:encode(text))
    local big = text:rep(20)
    local ids = tok:encode(big)
    assert.are.equal(#once * 20 >= #ids - 40 and #once * 20 <= #ids + 40, true)
    assert.are.equal(big, tok:decode(ids))
  end)
end)
