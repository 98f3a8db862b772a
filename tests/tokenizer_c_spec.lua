-- Runs the tokenizer core's C tests (tests/tokenizer_test.c, built by
-- `make test`) and reports each of them as a test here.
require("c_tests")(_ENV, "C tokenizer core (no Lua)", os.getenv("LUALIGN_TOKENIZER_TEST") or "./build/tokenizer_test")
