-- tests/fuzz/make_seeds.lua -- writes the seed corpora in tests/fuzz/seeds/
-- (committed; rerun only to change them):  bin/lualign tests/fuzz/make_seeds.lua
local la = require "lualign"
local sys = require "lualign.sys"
local root = "tests/fuzz/seeds"

local function put(name, file, bytes)
  assert(sys.mkdir(root .. "/" .. name))
  local f = assert(io.open(root .. "/" .. name .. "/" .. file, "wb"))
  f:write(bytes)
  f:close()
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- safetensors: files written by lualign, and a hand-made F16/BF16/F64 one.
local tmp = os.tmpname()
la.checkpoint.save(tmp, {w = la.tensor({{1.5, -2}, {0, 3}}), ids = la.tensor({1, 2, 3}),
  mask = la.tensor({true, false}), s = la.tensor(7.0)}, {step = "3", note = "caf\195\169"})
put("safetensors", "mixed.safetensors", read(tmp))
la.checkpoint.save(tmp, {}, {})
put("safetensors", "empty.safetensors", read(tmp))
la.checkpoint.save(tmp, {["a.weight"] = la.zeros(0, 3), ["b"] = la.ones(2, 1, 2, "int32")})
put("safetensors", "zero_size.safetensors", read(tmp))
os.remove(tmp)
local header = '{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},'
  .. '"b":{"dtype":"BF16","shape":[1],"data_offsets":[4,6]},'
  .. '"d":{"dtype":"F64","shape":[1],"data_offsets":[6,14]},"__metadata__":{"k":"v\\u00e9"}}'
while (#header + 8) % 8 ~= 0 do header = header .. " " end
put("safetensors", "halves.safetensors", string.pack("<I8", #header) .. header
  .. "\0\60\0\188" .. "\128\63" .. string.pack("<d", 2.5))

-- bpe: flags, vocabulary lines, vocab.bpe, specials, text.
local bytes = require("lualign.tokenizer")._byte_spellings()
local vocab = table.concat(bytes, "\n") .. "\nĠt\nĠth\nĠthe\nhe\nhel\nhell\nhello"
local merges = "#version: 0.2\nĠ t\nĠt h\nĠth e\nh e\nhe l\nhel l\nhell o\n"
put("bpe", "basic", "\0" .. vocab .. "\0" .. merges .. "\0<|endoftext|>\n=3 <|pad|>\0hello the world <|endoftext|> hellohello")
put("bpe", "heap_prefix", "\3" .. vocab .. "\0" .. merges .. "\0<|end|>\0" .. string.rep("hello", 40) .. " the")
put("bpe", "train", "\40\0\0<|end|>\0the cat sat on the mat\nthe <|end|> dog ate the hat\nhello hello hello")

-- JSONL: each format, with a few lines wrong in different ways.
put("jsonl", "sft.jsonl", '{"prompt": "What is 2+2?", "completion": "4"}\n'
  .. '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n'
  .. '{"prompt": "Name a colour.", "completion": " Blue", "source": "quiz", "n": 3}\n')
put("jsonl", "preference.jsonl", '{"prompt": "Rate", "chosen": "good", "rejected": "bad"}\n'
  .. '{"prompt": "Rate", "chosen": "fine", "rejected": "awful", "p": 0.3, "margin": 1.5}\n'
  .. '\239\187\191{"prompt": "Word", "chosen": "joy", "rejected": "grief", "votes": [7, 3]}\r\n')
put("jsonl", "prompts.jsonl", '{"prompt": "Tell me a story"}\n\n{"prompt": "caf\195\169", "id": 7}\n')
put("jsonl", "bad.jsonl", '{"prompt": "x", "completion": ""}\n{"prompt": 3}\n[1, 2]\n{"p": NaN}\n{bad json\n')

-- tokenizer.json (small trained tokenizer) and a GPT-2 style pair.
local tok = la.tokenizer.train({"the cat sat on the mat", "the dog ate the hat"}, {vocab_size = 270, min_frequency = 1})
local dir = os.tmpname()
os.remove(dir)
assert(sys.mkdir(dir))
tok:save(dir .. "/tokenizer.json")
put("tokenizer_json", "tokenizer.json", read(dir .. "/tokenizer.json"))
os.execute("rm -rf " .. dir)
local enc = {}
for i, s in ipairs(bytes) do enc[#enc + 1] = string.format("%q: %d", s, i - 1) end
local extra = {"Ġt", "Ġth", "Ġthe", "he", "<|endoftext|>"}
for i, s in ipairs(extra) do enc[#enc + 1] = string.format("%q: %d", s, 255 + i) end
local encoder = "{" .. table.concat(enc, ", "):gsub("\\\n", "\\n") .. "}"
put("tokenizer_json", "gpt2_pair", "GPT2\n" .. encoder .. "\0#version: 0.2\nĠ t\nĠt h\nĠth e\nh e\n")
-- tokenizer.json pipelines (normalizers, pre-tokenizers, added-token flags,
-- byte fallback, decoders, post-processors), from the test fixtures
do
  local cjson = require "cjson"
  local refs = cjson.decode(read("tests/fixtures/tokenizer_refs.json"))
  for _, name in ipairs({"metaspace_first_added", "digits_runs_punct_prev", "nfd_byte_fallback", "nfkc_lower_whitespace"}) do
    put("tokenizer_json", name .. ".json", cjson.encode(refs.synthetic.tokenizers[name].tokenizer))
  end
end

-- encode: texts.
put("encode", "english", "Hello world! It's the 2nd test, isn't it?  Yes.\n\n")
put("encode", "unicode", "caf\195\169 na\195\175ve \228\184\173\230\150\135 \240\159\152\128 \u{2028}x\u{3000}y")
put("encode", "invalid_utf8", "ok \255\254 \192\128 \237\160\128 end\0nul")
put("encode", "specials", "<|endoftext|>a<|endoftext|><|endoftext|> <|endof")
put("encode", "long_word", string.rep("abcdefgh", 40) .. " " .. string.rep("ab", 100))
put("encode", "spaces", "   \t\t\n  x  \r\n")
print("seeds written to " .. root)
