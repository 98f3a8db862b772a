-- Reports the tests of a C test program (tests/*_test.c, built by `make test`)
-- as busted tests: the program prints "ok NAME" or "FAIL NAME: why" per test
-- and ends with "N passed, N failed".  `busted` is the spec's environment,
-- which holds busted's describe, it and assert (a required module sees only
-- the global table).  `command`, when given, is how to run the program (a
-- script under a launcher, say); `binary` is still the file that must exist.
return function(busted, title, binary, command)
  local describe, it, assert = busted.describe, busted.it, busted.assert
  describe(title, function()
    local f = io.open(binary, "rb")
    if not f then
      it("is built", function() error("test binary not found at " .. binary .. "; run make test") end)
      return
    end
    f:close()
    local p = assert(io.popen((command or binary) .. " 2>&1"))
    local output = p:read("a")
    p:close()
    local seen = 0
    for line in output:gmatch("[^\n]+") do
      local ok_name = line:match("^ok ([%w_]+)$")
      local fail_name, why = line:match("^FAIL ([%w_]+): (.*)$")
      if ok_name or fail_name then
        seen = seen + 1
        it(ok_name or fail_name, function() assert(ok_name, why) end)
      end
    end
    it("ran and reported a summary", function()
      assert.is_true(seen > 0, "no test lines in:\n" .. output)
      assert.is_truthy(output:match("%d+ passed, %d+ failed\n$"), output)
    end)
  end)
end
