-- lualign.checkpoint: safetensors round trips, files built byte by byte from
-- the format's description (independently of the writer), every kind of
-- malformed file, and atomic saves.
local la = require "lualign"
local ckpt = la.checkpoint

local h = require "helpers"
local fails_with, write_file, read_file = h.fails_with, h.write, h.read

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function make_dir()
  local p = assert(io.popen("mktemp -d"))
  local dir = p:read("l")
  p:close()
  return dir
end

local function remove_tree(dir) os.execute("rm -rf " .. shell_quote(dir)) end

local function list_dir(dir)
  local p = assert(io.popen("ls -A " .. shell_quote(dir)))
  local names = {}
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  table.sort(names)
  return names
end

-- A safetensors file from a header string and the data bytes.
local function st_bytes(header, data)
  return string.pack("<I8", #header) .. header .. (data or "")
end

-- Elementwise equality of two nested lists, NaN equal to NaN, -0 to -0.
local function same_values(a, b)
  if type(a) ~= "table" then
    if a ~= a then return b ~= b end
    if a == 0 and b == 0 and math.type(a) == "float" then return 1 / a == 1 / b end
    return a == b and math.type(a) == math.type(b)
  end
  if type(b) ~= "table" or #a ~= #b then return false end
  for i = 1, #a do
    if not same_values(a[i], b[i]) then return false end
  end
  return true
end

local function f32(x) return la.tensor(x, "float32"):item() end

describe("checkpoint", function()
  local dir
  before_each(function() dir = make_dir() end)
  after_each(function()
    la.set_memory_limit(nil)
    if dir then remove_tree(dir) end
  end)

  local function path(name) return dir .. "/" .. name end

  -- Writes bytes to a file and loads it, for the error cases.
  local function load_bytes(bytes, name)
    local p = path(name or "bad.safetensors")
    write_file(p, bytes)
    return ckpt.load(p)
  end

  describe("round trips", function()
    it("keeps every dtype's values exactly", function()
      local tensors = {
        f = la.tensor({{1.5, -2.25, 1 / 0}, {-1 / 0, 0 / 0, -0.0}}, "float32"),
        small = la.tensor({1e-45, 3.4028234663852886e38}, "float32"),
        i = la.tensor({2147483647, -2147483648, 0, 7}, "int32"),
        l = la.tensor({math.maxinteger, math.mininteger, (1 << 53) + 1, -1}),
        b = la.tensor({{true, false}, {false, true}}),
      }
      local p = path("dtypes.safetensors")
      ckpt.save(p, tensors)
      local back, meta = ckpt.load(p)
      assert.same({}, meta)
      local n = 0
      for name, t in pairs(back) do
        n = n + 1
        assert.equal(tensors[name]:dtype(), t:dtype(), name)
        assert.same(tensors[name]:shape(), t:shape(), name)
        assert.is_true(same_values(tensors[name]:totable(), t:totable()), name)
      end
      assert.equal(5, n)
      assert.equal(math.mininteger, back.l:totable()[2])
      assert.equal((1 << 53) + 1, back.l:totable()[3])
    end)

    it("writes the safetensors dtype names", function()
      local p = path("names.safetensors")
      ckpt.save(p, {f = la.zeros(1), i = la.zeros(1, "int32"), l = la.zeros(1, "int64"),
                    b = la.zeros(1, "bool")})
      local h = ckpt.header(p)
      assert.equal("F32", h.tensors.f.dtype)
      assert.equal("I32", h.tensors.i.dtype)
      assert.equal("I64", h.tensors.l.dtype)
      assert.equal("BOOL", h.tensors.b.dtype)
      assert.equal("float32", h.tensors.f.loads_as)
    end)

    it("handles 0-d, empty and many-dimensional tensors", function()
      local tensors = {
        scalar = la.tensor(3.5),
        iscalar = la.tensor(42),
        empty = la.zeros(0),
        empty2 = la.zeros(3, 0, 2, "int32"),
        eight = la.arange(256):view(2, 2, 2, 2, 2, 2, 2, 2),
      }
      local p = path("shapes.safetensors")
      ckpt.save(p, tensors)
      local back = ckpt.load(p)
      assert.same({}, back.scalar:shape())
      assert.equal(3.5, back.scalar:item())
      assert.equal(42, back.iscalar:item())
      assert.same({0}, back.empty:shape())
      assert.same({3, 0, 2}, back.empty2:shape())
      assert.equal("int32", back.empty2:dtype())
      assert.is_true(same_values(tensors.eight:totable(), back.eight:totable()))
      local h = ckpt.header(p)
      assert.same({}, h.tensors.scalar.shape)
      assert.equal(0, h.tensors.empty.nbytes)
      assert.equal(h.tensors.empty.data_offsets[1], h.tensors.empty.data_offsets[2])
    end)

    it("writes the values of non-contiguous tensors, row-major", function()
      local base = la.arange(12):view(3, 4):float()
      local tensors = {
        t = base:t(),
        narrow = base:narrow(2, 2, 2),
        column = base:select(2, 3),
        expanded = la.tensor({1, 2, 3}, "int32"):expand(2, 3),
        permuted = la.arange(24):view(2, 3, 4):permute(3, 1, 2),
      }
      for _, t in pairs(tensors) do assert.is_false(t:is_contiguous()) end
      local p = path("views.safetensors")
      ckpt.save(p, tensors)
      local back = ckpt.load(p)
      for name, t in pairs(tensors) do
        assert.is_true(back[name]:is_contiguous(), name)
        assert.same(t:shape(), back[name]:shape(), name)
        assert.is_true(same_values(t:totable(), back[name]:totable()), name)
      end
      -- the bytes in the file are the row-major values of t
      local raw = read_file(p)
      local h = ckpt.header(p)
      local off = 8 + h.header_size + h.tensors.t.data_offsets[1]
      local first = {string.unpack("<ffff", raw, off + 1)}
      assert.same({0, 4, 8, 1}, {first[1], first[2], first[3], first[4]})
    end)

    it("keeps metadata, converting numbers and booleans to strings", function()
      local p = path("meta.safetensors")
      local meta = {
        epoch = 3, lr = 0.5, done = false, note = "quotes \" and \\ and\nnewline\tand \1 control",
        unicode = "héllo ✓ 🦙", empty = "",
      }
      ckpt.save(p, {w = la.ones(2)}, meta)
      local _, back = ckpt.load(p)
      assert.same({epoch = "3", lr = "0.5", done = "false", note = meta.note, unicode = meta.unicode,
                   empty = ""}, back)
      assert.same(back, ckpt.header(p).metadata)
      -- metadata alone, no tensors
      local p2 = path("only_meta.safetensors")
      ckpt.save(p2, {}, {only = "meta"})
      local none, m2 = ckpt.load(p2)
      assert.is_nil(next(none))
      assert.same({only = "meta"}, m2)
      assert.equal(string.pack("<I8", 32) .. '{"__metadata__":{"only":"meta"}}', read_file(p2))
      ckpt.save(p2, {})
      assert.equal(string.pack("<I8", 8) .. "{}      ", read_file(p2))
    end)

    it("keeps unusual names", function()
      local names = {"", "a.b", "quote\"back\\slash", "new\nline", "é✓🦙", ("x"):rep(1000)}
      local tensors = {}
      for i, name in ipairs(names) do tensors[name] = la.full({1}, i) end
      local p = path("unusual.safetensors")
      ckpt.save(p, tensors)
      local back = ckpt.load(p)
      for i, name in ipairs(names) do assert.equal(i, back[name]:item()) end
    end)

    it("writes sorted names, an 8-byte aligned data start and aligned tensors", function()
      local p = path("layout.safetensors")
      ckpt.save(p, {zeta = la.zeros(3, "bool"), alpha = la.zeros(3), mid = la.zeros(3, "int64"),
                    beta = la.zeros(1, "bool"), gamma = la.zeros(5, "int32")}, {z = "1", a = "2"})
      local raw = read_file(p)
      local n = string.unpack("<I8", raw)
      assert.equal(0, (8 + n) % 8)
      local header = raw:sub(9, 8 + n)
      assert.truthy(header:match("^{\"__metadata__\":{\"a\":\"2\",\"z\":\"1\"},"))
      local last = 0
      for _, name in ipairs({"alpha", "beta", "gamma", "mid", "zeta"}) do
        local at = header:find("\"" .. name .. "\":", 1, true)
        assert.truthy(at and at > last, name)
        last = at
      end
      assert.truthy(header:match("}( *)$"))
      local h = ckpt.header(p)
      assert.same({"alpha", "beta", "gamma", "mid", "zeta"}, h.names)
      local sizes = {F32 = 4, I32 = 4, I64 = 8, BOOL = 1}
      for name, info in pairs(h.tensors) do
        assert.equal(0, info.data_offsets[1] % sizes[info.dtype], name)
      end
      assert.equal(#raw - 8 - n, h.data_size)
    end)

    it("gives the same bytes for the same tensors", function()
      la.manual_seed(3)
      local tensors = {a = la.randn(4, 5), b = la.arange(7), c = la.zeros(2, "bool")}
      ckpt.save(path("1.safetensors"), tensors, {k = "v"})
      ckpt.save(path("2.safetensors"), tensors, {k = "v"})
      assert.equal(read_file(path("1.safetensors")), read_file(path("2.safetensors")))
    end)

    it("saves tensors that require grad and loads plain leaves", function()
      local w = la.randn(3, 2):requires_grad()
      local y = w * 2
      local p = path("grad.safetensors")
      ckpt.save(p, {w = w, y = y})
      local back = ckpt.load(p)
      assert.is_true(back.w:is_leaf())
      assert.is_false(back.w:needs_grad())
      assert.is_true(back.y:allclose(w:detach() * 2))
    end)

    it("replaces an existing file", function()
      local p = path("replace.safetensors")
      ckpt.save(p, {a = la.ones(1000)})
      ckpt.save(p, {b = la.zeros(2)})
      local back = ckpt.load(p)
      assert.is_nil(back.a)
      assert.same({0, 0}, back.b:totable())
      assert.same({"replace.safetensors"}, list_dir(dir))
    end)

    it("loads only the tensors asked for", function()
      local p = path("some.safetensors")
      ckpt.save(p, {a = la.ones(2), b = la.zeros(3), c = la.tensor({7})}, {k = "v"})
      local back, meta = ckpt.load(p, {names = {"c", "a"}})
      assert.same({"a", "c"}, (function()
        local ks = {}
        for k in pairs(back) do ks[#ks + 1] = k end
        table.sort(ks)
        return ks
      end)())
      assert.equal(7, back.c:item())
      assert.same({k = "v"}, meta)
      fails_with("checkpoint.load: " .. p .. ": has no tensor named 'd' (it holds 3)",
        ckpt.load, p, {names = {"a", "d"}})
      fails_with("checkpoint.load: names[1] is a number, not a tensor name", ckpt.load, p, {names = {1}})
      fails_with("checkpoint.load: unknown option 'name' (known: names)", ckpt.load, p, {name = {"a"}})
      fails_with("checkpoint.load: opts.names must be a list of tensor names (got a string)",
        ckpt.load, p, {names = "a"})
    end)

    it("is reachable as la.checkpoint and require 'lualign.checkpoint'", function()
      assert.equal(require("lualign.checkpoint"), la.checkpoint)
    end)
  end)

  describe("files built by hand from the format's description", function()
    it("reads every dtype, whitespace, padding and escapes", function()
      local data = string.pack("<ffff", 1.5, -2, 3.25, 0)          -- f: F32 (2, 2), bytes 0..16
        .. string.pack("<i4i4i4", -7, 0, 2147483647)                 -- i: I32 (3,), 16..28
        .. string.pack("<i8i8", math.mininteger, 1 << 40)            -- l: I64 (2,), 28..44
        .. string.pack("<BBB", 1, 0, 2)                              -- b: BOOL (3,), 44..47
        .. string.pack("<f", 9.5)                                    -- s: F32 (), 47..51
      local header = '{ "f" : {"shape": [2, 2], "dtype": "F32", "data_offsets": [0, 16]},\n'
        .. '\t"i": {"dtype":"I32","shape":[3],"data_offsets":[16,28]},\r\n'
        .. '"__metadata__": {"format": "pt", "esc": "a\\"b\\\\c\\/d\\u00e9\\ud83e\\udd99\\n"},'
        .. '"l": {"data_offsets": [28, 44], "dtype": "I64", "shape": [2]},'
        .. '"empty": {"dtype": "F32", "shape": [0, 4], "data_offsets": [47, 47]},'
        .. '"b": {"dtype": "BOOL", "shape": [3], "data_offsets": [44, 47]},'
        .. '"na\\u00efve \\"s\\"": {"dtype": "F32", "shape": [], "data_offsets": [47, 51]}}'
        .. "     "   -- padding with spaces, as the format allows
      local p = path("hand.safetensors")
      write_file(p, st_bytes(header, data))
      local t, meta = ckpt.load(p)
      assert.same({{1.5, -2}, {3.25, 0}}, t.f:totable())
      assert.equal("int32", t.i:dtype())
      assert.same({-7, 0, 2147483647}, t.i:totable())
      assert.equal("int64", t.l:dtype())
      assert.same({math.mininteger, 1 << 40}, t.l:totable())
      assert.same({true, false, true}, t.b:totable())   -- any non-zero byte is true
      assert.equal(9.5, t['naïve "s"']:item())
      assert.same({0, 4}, t.empty:shape())
      assert.same({format = "pt", esc = 'a"b\\c/dé🦙\n'}, meta)
    end)

    it("reads F16, BF16 and F64 as float32", function()
      local f16 = string.pack("<I2I2I2I2I2I2I2I2", 0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001, 0x7C00,
                              0x8000, 0x7E00)
      local bf16 = string.pack("<I2I2I2I2", 0x3F80, 0xC020, 0x4049, 0xFF80)
      local f64 = string.pack("<dddd", 0.1, 1e300, -1e300, 2 ^ -149)
      local data = f64 .. f16 .. bf16
      local header = '{"h":{"dtype":"F16","shape":[2,4],"data_offsets":[32,48]},'
        .. '"bf":{"dtype":"BF16","shape":[4],"data_offsets":[48,56]},'
        .. '"d":{"dtype":"F64","shape":[2,2],"data_offsets":[0,32]}}'
      local p = path("halves.safetensors")
      write_file(p, st_bytes(header, data))
      local t = ckpt.load(p)
      for _, name in ipairs({"h", "bf", "d"}) do assert.equal("float32", t[name]:dtype()) end
      local h = t.h:totable()
      assert.same({1, -2, 0.5, 65504}, h[1])
      assert.equal(2 ^ -24, h[2][1])                 -- the smallest subnormal
      assert.equal(1 / 0, h[2][2])
      assert.equal(0, h[2][3])
      assert.equal(-1, 1 / h[2][3] < 0 and -1 or 1)  -- negative zero
      assert.is_true(h[2][4] ~= h[2][4])             -- NaN
      assert.same({1, -2.5, 3.140625, -1 / 0}, t.bf:totable())
      assert.same({{f32(0.1), 1 / 0}, {-1 / 0, 2 ^ -149}}, t.d:totable())
      local info = ckpt.header(p).tensors
      assert.equal("F16", info.h.dtype)
      assert.equal("float32", info.bf.loads_as)
    end)

    it("reads tensors whose data is not aligned in the file", function()
      -- a 7-byte header puts the data at file offset 15
      local header = '{"x":1}'
      assert.equal(7, #header)
      header = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'   -- 55 bytes: data at 63
      local p = path("unaligned.safetensors")
      write_file(p, st_bytes(header, string.pack("<ff", 1.25, -8)))
      assert.same({1.25, -8}, ckpt.load(p).a:totable())
    end)

    it("reads an empty file with no tensors", function()
      local t, meta = load_bytes(st_bytes("{}"))
      assert.same({}, meta)
      assert.is_nil(next(t))
      t, meta = load_bytes(st_bytes('{"__metadata__":null}  '))
      assert.is_nil(next(t))
      assert.same({}, meta)
    end)

    it("describes tensors lualign cannot load, and refuses to load them", function()
      local header = '{"u":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
        .. '"f":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}'
      local p = path("u8.safetensors")
      write_file(p, st_bytes(header, "\1\2" .. string.pack("<f", 1)))
      local h = ckpt.header(p)
      assert.equal("U8", h.tensors.u.dtype)
      assert.is_nil(h.tensors.u.loads_as)
      assert.same({0, 2}, h.tensors.u.data_offsets)
      fails_with(p .. ": tensor 'u' has dtype U8, which lualign cannot load", ckpt.load, p)
      assert.equal(1, ckpt.load(p, {names = {"f"}}).f:item())
    end)
  end)

  describe("malformed files", function()
    local function entry(name, dtype, shape, b, e)
      return string.format('"%s":{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}', name, dtype,
                           table.concat(shape, ","), b, e)
    end

    local function bad(expected, header, data)
      return fails_with(expected, load_bytes, st_bytes(header, data))
    end

    it("names the caller's line and the file", function()
      local err = fails_with("No such file", function()
        local t = ckpt.load(path("none.safetensors"))   -- not a tail call, so the line shows
        return t
      end)
      assert.truthy(err:find("^[^:]*checkpoint_spec.lua:%d+: checkpoint.load: "), err)
      err = fails_with("the path must be a string", function()
        local t = ckpt.load(42)
        return t
      end)
      assert.truthy(err:find("^[^:]*checkpoint_spec.lua:%d+: checkpoint.load: the path"), err)
      err = fails_with("not a tensor", function()
        ckpt.save(path("x.safetensors"), {w = 1})
      end)
      assert.truthy(err:find("^[^:]*checkpoint_spec.lua:%d+: checkpoint.save: "), err)
    end)

    it("missing files and directories", function()
      local p = path("missing.safetensors")
      fails_with("checkpoint.load: " .. p .. ": cannot open: No such file or directory", ckpt.load, p)
      fails_with("checkpoint.header: " .. p .. ": cannot open: No such file or directory", ckpt.header, p)
      fails_with("checkpoint.load: " .. dir .. ": is a directory, not a safetensors file", ckpt.load, dir)
    end)

    it("files shorter than 8 bytes", function()
      local p = path("bad.safetensors")
      fails_with(p .. ": not a safetensors file: it has 0 bytes, fewer than the 8 that give the header length",
        load_bytes, "")
      fails_with(p .. ": not a safetensors file: it has 5 bytes, fewer than the 8", load_bytes, "\2\0\0\0\0")
      fails_with(p .. ": not a safetensors file: it has 1 byte,", load_bytes, "{")
    end)

    it("header lengths past the end of the file, or absurdly large", function()
      local p = path("bad.safetensors")
      fails_with(p .. ": the header length in the first 8 bytes is 1000, which runs past the end of the "
        .. "file (20 bytes; is it truncated?)", load_bytes, string.pack("<I8", 1000) .. ("{"):rep(12))
      fails_with("the header length in the first 8 bytes is 4611686018427387904, larger than the limit "
        .. "of 100000000 bytes (is this a safetensors file?)", load_bytes, string.pack("<I8", 1 << 62) .. "{}")
      fails_with("the header length in the first 8 bytes is 18446744073709551615, larger than the limit",
        load_bytes, string.pack("<i8", -1) .. "{}")
      -- a text file read as safetensors
      fails_with("larger than the limit of 100000000 bytes", load_bytes, "hello, this is not a checkpoint\n")
    end)

    it("malformed JSON, with the byte offset", function()
      local p = path("bad.safetensors")
      local function at(expected, header) return bad(p .. ": malformed JSON in the header at byte " .. expected, header) end
      at("0: expected '{' (a header starts with '{'), found ' '", ' {}')
      at("0: expected '{' (a header starts with '{'), but the header ends there", '')
      at("2: expected the end of the header (only spaces may follow the object), found 'x'", '{}x')
      at("3: expected the end of the header (only spaces may follow the object), found byte 0x00", '{} \0')
      at("20: expected ',' or '}', found '\"'", '{"a":{"dtype":"F32" "shape":[1],"data_offsets":[0,4]}}')
      at("4: expected ':', found ','", '{"a",1}')
      at("1: unterminated string", '{"abc')
      at("5: expected a value, but the header ends there", '{"a":')
      at("3: invalid escape in a string", '{"a\\x":{}}')
      at("2: invalid UTF-8 in a string", '{"\255":{}}')
      at("2: invalid UTF-8 in a string", '{"\192\128":{}}')     -- overlong NUL
      at("3: control character in a string (it must be escaped)", '{"a\nb":{}}')
      at("2: unpaired UTF-16 surrogate in a \\u escape", '{"\\ud800x":{}}')
      at("2: unpaired UTF-16 surrogate in a \\u escape", '{"\\udc00":{}}')
      at("2: \\u must be followed by 4 hex digits", '{"\\u12g4":{}}')
      at("2: \\u0000 (NUL) is not allowed in names and metadata", '{"\\u0000":{}}')
      at("16: numbers may not have leading zeros", '{"a":{"shape":[01]}}')
      at("19: expected ',' or ']', found '}'", '{"a":{"shape":[1, 2}}')
      at("17: expected a value, found ']'", '{"a":{"shape":[1,]}}')
      at("6: expected a string, found 'x'", '{"a":{x}}')
      at("14: expected a value, found 'x'", '{"a":{"dtype":x}}')
      at("5: expected a value, found 'T'", '{"a":True}')
      -- the closing brace missing
      local h = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
      bad(p .. ": malformed JSON in the header at byte " .. #h .. ": expected ',' or '}', but the header "
        .. "ends there", h, "abcd")
    end)

    it("missing and ill-typed fields", function()
      local p = path("bad.safetensors")
      local e = p .. ": tensor 'a'"
      bad(e .. " has no \"dtype\" field", '{"a":{"shape":[1],"data_offsets":[0,4]}}', "abcd")
      bad(e .. " has no \"shape\" field", '{"a":{"dtype":"F32","data_offsets":[0,4]}}', "abcd")
      bad(e .. " has no \"data_offsets\" field", '{"a":{"dtype":"F32","shape":[1]}}', "abcd")
      bad(e .. " has no \"dtype\" field", '{"a":{}}')
      bad(e .. ': "dtype" must be a string such as "F32" (found a number)', '{"a":{"dtype":4}}')
      bad(e .. ': "shape" must be a list of at most 8 non-negative integers (found a string)', '{"a":{"shape":"2"}}')
      bad(e .. ': "shape" must be a list of at most 8 non-negative integers (found a number that is not a '
        .. 'non-negative integer at position 2)', '{"a":{"shape":[2,1.5]}}')
      bad(e .. ': "shape" must be a list of at most 8 non-negative integers (found a number that is not a '
        .. 'non-negative integer at position 1)', '{"a":{"shape":[-1]}}')
      bad("(found a number that is not a non-negative integer at position 1)", '{"a":{"shape":[1e2]}}')
      bad(e .. ': "shape" must be a list of at most 8 non-negative integers (found a string at position 2)',
        '{"a":{"shape":[1,"2"]}}')
      bad(e .. ': "shape" must be a list of at most 8 non-negative integers (found null at position 1)',
        '{"a":{"shape":[null]}}')
      bad(e .. ': "shape" must be a list of at most 8 non-negative integers (found more than 8 entries)',
        '{"a":{"shape":[1,1,1,1,1,1,1,1,1]}}')
      bad(e .. ': "data_offsets" must be a list of two non-negative integers [begin, end] (found 1 entry)',
        '{"a":{"data_offsets":[0]}}')
      bad(e .. ': "data_offsets" must be a list of two non-negative integers [begin, end] (found more than 2 entries)',
        '{"a":{"data_offsets":[0,4,8]}}')
      bad(e .. ': "data_offsets" must be a list of two non-negative integers [begin, end] (found a number '
        .. 'too large at position 2)', '{"a":{"data_offsets":[0,99999999999999999999]}}')
      bad(e .. ': "data_offsets" must be a list of two non-negative integers [begin, end] (found an object)',
        '{"a":{"data_offsets":{}}}')
      bad(e .. ': expected an object with dtype, shape and data_offsets (found a list)', '{"a":[1]}')
      bad(e .. ': expected an object with dtype, shape and data_offsets (found a boolean)', '{"a":true}')
      bad(e .. ' has an unknown field "offsets" (a tensor has exactly "dtype", "shape" and "data_offsets")',
        '{"a":{"dtype":"F32","shape":[1],"offsets":[0,4]}}', "abcd")
      bad(e .. ' has two "dtype" fields', '{"a":{"dtype":"F32","dtype":"I32"}}')
      bad(e .. ' has two "shape" fields', '{"a":{"shape":[1],"shape":[1]}}')
      bad(e .. ' has two "data_offsets" fields', '{"a":{"data_offsets":[0,4],"data_offsets":[0,4]}}')
    end)

    it("unknown dtypes", function()
      bad(path("bad.safetensors") .. ': tensor \'a\' has unknown dtype "F17" (safetensors dtypes are BOOL, U8',
        '{' .. entry("a", "F17", {1}, 0, 4) .. '}', "abcd")
      bad("tensor 'a' has unknown dtype \"float32\"", '{' .. entry("a", "float32", {1}, 0, 4) .. '}', "abcd")
    end)

    it("byte counts that do not match the shape and dtype", function()
      local p = path("bad.safetensors")
      bad(p .. ": tensor 'w': shape (2, 2) of F32 needs 16 bytes, but data_offsets [0, 12] hold 12",
        '{' .. entry("w", "F32", {2, 2}, 0, 12) .. '}', ("x"):rep(12))
      bad(p .. ": tensor 'w': shape () of I64 needs 8 bytes, but data_offsets [0, 4] hold 4",
        '{' .. entry("w", "I64", {}, 0, 4) .. '}', ("x"):rep(4))
      bad(p .. ": tensor 'w': shape (0, 3) of F32 needs 0 bytes, but data_offsets [0, 4] hold 4",
        '{' .. entry("w", "F32", {0, 3}, 0, 4) .. '}', ("x"):rep(4))
      bad(p .. ": tensor 'w': data_offsets [8, 4] end before they begin",
        '{' .. entry("w", "F32", {1}, 8, 4) .. '}', ("x"):rep(8))
      bad(p .. ": tensor 'w': shape (4294967296, 4294967296) is too large",
        '{' .. entry("w", "F32", {1 << 32, 1 << 32}, 0, 4) .. '}', ("x"):rep(4))
    end)

    it("offsets that run past the end of the file", function()
      local p = path("bad.safetensors")
      bad(p .. ": tensor 'w': data_offsets [0, 16] run past the end of the file (it holds 8 bytes of data "
        .. "after the header)", '{' .. entry("w", "F32", {4}, 0, 16) .. '}', ("x"):rep(8))
      bad(p .. ": tensor 'big': data_offsets [4, 4000000000004] run past the end of the file",
        '{' .. entry("a", "F32", {1}, 0, 4) .. "," .. entry("big", "F32", {1000000000000}, 4, 4000000000004)
        .. '}', ("x"):rep(4))
    end)

    it("overlapping tensors, holes and trailing bytes (the format forbids all three)", function()
      local p = path("bad.safetensors")
      bad(p .. ": tensors 'a' (bytes [0, 8)) and 'b' (bytes [4, 12)) overlap",
        '{' .. entry("b", "F32", {2}, 4, 12) .. "," .. entry("a", "F32", {2}, 0, 8) .. '}', ("x"):rep(12))
      bad(p .. ": tensors 'a' (bytes [0, 8)) and 'b' (bytes [0, 8)) overlap",   -- two names, one range
        '{' .. entry("a", "F32", {2}, 0, 8) .. "," .. entry("b", "I32", {2}, 0, 8) .. '}', ("x"):rep(8))
      bad(p .. ": tensors 'a' (bytes [0, 8)) and 'e' (bytes [4, 4)) overlap",
        '{' .. entry("a", "F32", {2}, 0, 8) .. "," .. entry("e", "F32", {0}, 4, 4) .. '}', ("x"):rep(8))
      bad(p .. ": bytes [4, 8) of the data, before tensor 'b', belong to no tensor (the format forbids holes)",
        '{' .. entry("a", "F32", {1}, 0, 4) .. "," .. entry("b", "F32", {1}, 8, 12) .. '}', ("x"):rep(12))
      bad(p .. ": bytes [0, 4) of the data, before tensor 'a', belong to no tensor",
        '{' .. entry("a", "F32", {1}, 4, 8) .. '}', ("x"):rep(8))
      bad(p .. ": 2 bytes after the last tensor ('a', which ends at byte 4 of the data) belong to no tensor "
        .. "(the format forbids trailing data)", '{' .. entry("a", "F32", {1}, 0, 4) .. '}', ("x"):rep(6))
      bad(p .. ": the file has 3 bytes of data after the header but no tensors", '{}', "xyz")
      -- empty tensors at the same offset are fine
      local t = load_bytes(st_bytes('{' .. entry("a", "F32", {0}, 0, 0) .. "," .. entry("b", "F32", {0}, 0, 0)
        .. "," .. entry("c", "F32", {1}, 0, 4) .. '}', string.pack("<f", 2)))
      assert.equal(2, t.c:item())
    end)

    it("duplicate names", function()
      local p = path("bad.safetensors")
      bad(p .. ": tensor name 'a' appears twice in the header",
        '{' .. entry("a", "F32", {1}, 0, 4) .. "," .. entry("a", "F32", {1}, 4, 8) .. '}', ("x"):rep(8))
      bad(p .. ": tensor name 'é' appears twice in the header",   -- the same name, escaped once
        '{' .. entry("é", "F32", {1}, 0, 4) .. "," .. entry("\\u00e9", "F32", {1}, 4, 8) .. '}', ("x"):rep(8))
      bad(p .. ": __metadata__ key 'k' appears twice in the header", '{"__metadata__":{"k":"1","k":"2"}}')
      bad(p .. ': the header has two "__metadata__" entries', '{"__metadata__":{},"__metadata__":{}}')
    end)

    it("metadata that is not a map of strings", function()
      local p = path("bad.safetensors")
      bad(p .. ": __metadata__ value for key 'epoch' must be a string (found a number)",
        '{"__metadata__":{"format":"pt","epoch":3}}')
      bad(p .. ": __metadata__ value for key 'x' must be a string (found an object)", '{"__metadata__":{"x":{}}}')
      bad(p .. ": __metadata__ value for key 'x' must be a string (found null)", '{"__metadata__":{"x":null}}')
      bad(p .. ": __metadata__ must be an object of strings (found a list)", '{"__metadata__":["a"]}')
      bad(p .. ": __metadata__ must be an object of strings (found a string)", '{"__metadata__":"a"}')
    end)

    it("header() validates the same way", function()
      local p = path("bad.safetensors")
      write_file(p, st_bytes('{' .. entry("a", "F32", {1}, 0, 4) .. '}', ("x"):rep(5)))
      fails_with("checkpoint.header: " .. p .. ": 1 bytes after the last tensor", ckpt.header, p)
    end)

    it("never crashes on truncated or corrupted files", function()
      local good = path("good.safetensors")
      ckpt.save(good, {a = la.ones(2, 3), b = la.tensor({1, 2}, "int32"), c = la.tensor({true})}, {k = "v"})
      local bytes = read_file(good)
      for n = 0, #bytes - 1 do   -- every proper prefix is an error naming the file
        local p = path("cut.safetensors")
        write_file(p, bytes:sub(1, n))
        local ok, err = pcall(ckpt.load, p)
        assert(not ok and tostring(err):find(p, 1, true), "prefix of " .. n .. " bytes: " .. tostring(err))
      end
      -- every single-byte change in the header either loads or fails cleanly
      local n = string.unpack("<I8", bytes)
      local loaded = 0
      for i = 1, 8 + n do
        for _, v in ipairs({0, 0x20, 0x22, 0x31, 0x5B, 0x7D, 0xFF}) do
          local changed = bytes:sub(1, i - 1) .. string.char(v) .. bytes:sub(i + 1)
          local p = path("mutant.safetensors")
          write_file(p, changed)
          local ok, err = pcall(ckpt.load, p)
          if ok then loaded = loaded + 1
          else assert(tostring(err):find("checkpoint.load: " .. p, 1, true), tostring(err)) end
        end
      end
      assert.is_true(loaded > 0)   -- e.g. the same byte written back, or changed padding
    end)
  end)

  describe("saving: errors and atomicity", function()
    local function snapshot(p) return read_file(p) end

    it("refuses what is not a name = tensor table, leaving the old file", function()
      local p = path("keep.safetensors")
      ckpt.save(p, {w = la.ones(3)}, {step = 1})
      local before = snapshot(p)
      fails_with("checkpoint.save: the value for 'w' is a number, not a tensor", ckpt.save, p, {w = 3})
      fails_with("checkpoint.save: tensor names must be strings (found the number key 1)", ckpt.save, p,
        {la.ones(1)})
      fails_with("checkpoint.save: expected a table of name = tensor (got a nil)", ckpt.save, p)
      fails_with("checkpoint.save: expected a table of name = tensor (got a userdata)", ckpt.save, p, la.ones(1))
      fails_with("checkpoint.save: metadata value for 'cfg' is a table; values must be strings",
        ckpt.save, p, {w = la.zeros(1)}, {cfg = {lr = 1}})
      fails_with("checkpoint.save: metadata keys must be strings (found the number key 1)",
        ckpt.save, p, {w = la.zeros(1)}, {"x"})
      fails_with("checkpoint.save: metadata must be a table of strings (got a string)",
        ckpt.save, p, {w = la.zeros(1)}, "x")
      fails_with("checkpoint.save: the path must be a string (got a nil)", ckpt.save, nil, {})
      fails_with('"__metadata__" cannot be a tensor name', ckpt.save, p, {__metadata__ = la.zeros(1)})
      fails_with(p .. ": tensor names must be UTF-8 text without NUL bytes", ckpt.save, p, {["\255"] = la.zeros(1)})
      fails_with(p .. ": tensor names must be UTF-8 text without NUL bytes", ckpt.save, p, {["a\0b"] = la.zeros(1)})
      fails_with(p .. ": metadata value for key 'k' must be UTF-8 text", ckpt.save, p, {w = la.zeros(1)},
        {k = "\192\128"})
      local closed = la.zeros(2)
      getmetatable(closed).__close(closed)
      fails_with("checkpoint.save: the value for 'c' is a closed tensor, not a tensor", ckpt.save, p, {c = closed})
      assert.equal(before, snapshot(p))
      assert.same({"keep.safetensors"}, list_dir(dir))
    end)

    it("leaves the old file and no temporary file when writing fails midway", function()
      local p = path("keep.safetensors")
      ckpt.save(p, {w = la.ones(3)})
      local before = snapshot(p)
      -- the transpose must be copied to be written; a memory limit makes
      -- that copy fail after the temporary file was created and written to
      local big = la.randn(256, 256):t()
      collectgarbage()
      la.set_memory_limit(la.memory().live_bytes + 1024)
      fails_with("checkpoint.save: " .. p .. ": tensor 'big': out of memory", ckpt.save, p,
        {a = la.zeros(1), big = big})
      la.set_memory_limit(nil)
      assert.equal(before, snapshot(p))
      assert.same({"keep.safetensors"}, list_dir(dir))
    end)

    it("cleans up when the file cannot replace the target", function()
      local target = path("is_a_dir")
      assert(os.execute("mkdir " .. shell_quote(target) .. " && touch " .. shell_quote(target .. "/inside")))
      fails_with("checkpoint.save: " .. target .. ": cannot replace it with the new file: Is a directory",
        ckpt.save, target, {w = la.ones(1)})
      assert.same({"is_a_dir"}, list_dir(dir))
      assert.same({"inside"}, list_dir(target))
      fails_with(dir .. "/: names a directory, not a file", ckpt.save, dir .. "/", {w = la.ones(1)})
    end)

    it("reports directories it cannot write to", function()
      local p = path("no/such/dir/x.safetensors")
      fails_with("checkpoint.save: " .. p .. ": cannot create a temporary file beside it: No such file or directory",
        ckpt.save, p, {w = la.ones(1)})
      -- a read-only directory (root may write anyway: then there is nothing to check)
      local ro = path("ro")
      assert(os.execute("mkdir " .. shell_quote(ro)))
      local keep = ro .. "/keep.safetensors"
      ckpt.save(keep, {w = la.ones(2)})
      local before = snapshot(keep)
      assert(os.execute("chmod 555 " .. shell_quote(ro)))
      local probe = io.open(ro .. "/probe", "w")
      if probe then
        probe:close()
        os.remove(ro .. "/probe")
      else
        fails_with(keep .. ": cannot create a temporary file beside it: Permission denied", ckpt.save, keep,
          {w = la.zeros(2)})
        assert.equal(before, snapshot(keep))
        assert.same({"keep.safetensors"}, list_dir(ro))
      end
      os.execute("chmod 755 " .. shell_quote(ro))
    end)

    it("leaves no temporary files after many saves", function()
      for i = 1, 20 do ckpt.save(path("ckpt.safetensors"), {w = la.full({i}, i)}, {i = i}) end
      assert.same({"ckpt.safetensors"}, list_dir(dir))
      local t, meta = ckpt.load(path("ckpt.safetensors"))
      assert.equal(20, t.w:numel())
      assert.equal("20", meta.i)
    end)

    it("saves into the current directory with a bare file name", function()
      local pwd = assert(io.popen("pwd"))
      local old = pwd:read("l")
      pwd:close()
      -- run a child lualign process in dir, so this process's cwd stays put
      local cmd = string.format("cd %s && LUA_PATH=%s LUA_CPATH=%s lua5.4 -e %s", shell_quote(dir),
        shell_quote(old .. "/lua/?.lua;" .. old .. "/lua/?/init.lua;;"),
        shell_quote(old .. "/build/?.so;;"),
        shell_quote('local la = require "lualign"; la.checkpoint.save("bare.safetensors", {x = la.ones(2)})'))
      os.execute(cmd)   -- judged by what it left in dir
      assert.same({"bare.safetensors"}, list_dir(dir))
      assert.same({1, 1}, ckpt.load(path("bare.safetensors")).x:totable())
    end)
  end)
end)
