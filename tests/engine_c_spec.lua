-- Runs the C engine's own tests (tests/engine_test.c, built by `make test`)
-- and reports each of them as a test here.
require("c_tests")(_ENV, "C engine core (no Lua)", os.getenv("LUALIGN_ENGINE_TEST") or "./build/engine_test")
