-- busted output handler for `make test`: a dot per passing test, the details of
-- each failure and error, and a last line "N passed, N failed" (errors count as
-- failures).  Used as: busted -o tests/summary_output.lua tests

return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.base")()

  local function describe_failure(f, kind)
    local where = ""
    if f.element and f.element.trace and f.element.trace.short_src then
      where = f.element.trace.short_src .. ":" .. f.element.trace.currentline
    end
    local msg = f.message
    if type(msg) ~= "string" then msg = require("pl.pretty").write(msg) end
    local s = string.format("%s: %s\n  %s\n  %s", kind, f.name or "?", where, tostring(msg))
    if options.verbose and f.trace and f.trace.traceback then s = s .. "\n" .. f.trace.traceback end
    return s
  end

  handler.testEnd = function(element, parent, status)
    local mark = ({success = ".", failure = "F", error = "E", pending = "p"})[status] or "?"
    io.write(mark)
    io.flush()
    return nil, true
  end

  handler.fileStart = function(file)
    io.write("\n", file.name, " ")
    io.flush()
    return nil, true
  end

  handler.suiteEnd = function()
    io.write("\n")
    for _, f in ipairs(handler.failures) do io.write("\n", describe_failure(f, "FAILED"), "\n") end
    for _, f in ipairs(handler.errors) do io.write("\n", describe_failure(f, "ERROR"), "\n") end
    for _, p in ipairs(handler.pendings) do io.write("\nSKIPPED: ", tostring(p.message or p.name), "\n") end
    local failed = handler.failuresCount + handler.errorsCount
    local skipped = handler.pendingsCount > 0 and string.format(", %d skipped", handler.pendingsCount) or ""
    io.write(string.format("\n%d passed, %d failed%s\n", handler.successesCount, failed, skipped))
    io.flush()
    return nil, true
  end

  handler.errorFile = function()
    io.write("E")
    io.flush()
    return nil, true
  end

  busted.subscribe({"test", "end"}, handler.testEnd, {predicate = handler.cancelOnPending})
  busted.subscribe({"file", "start"}, handler.fileStart)
  busted.subscribe({"suite", "end"}, handler.suiteEnd)
  busted.subscribe({"error", "file"}, handler.errorFile)
  busted.subscribe({"failure", "file"}, handler.errorFile)
  busted.subscribe({"error", "describe"}, handler.errorFile)
  busted.subscribe({"failure", "describe"}, handler.errorFile)
  return handler
end
