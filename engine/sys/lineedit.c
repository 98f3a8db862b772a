/*
** lineedit.c -- the REPL's terminal support, as the table
** lualign.sys.lineedit:
**
**   readline(prompt, history, completer) -> line | nil, "eof" | nil, "interrupt"
**       a small linenoise-style single-line editor in raw terminal mode:
**       arrows, Home/End, Ctrl-A/E/B/F/K/U/W/L/P/N, backspace/delete,
**       UTF-8 aware cursor movement, history (a Lua list of strings, oldest
**       first) and tab completion (completer(text_before_cursor) returns a
**       list of words and the 1-based byte where the word being completed
**       starts).
**   isatty(fd) -> boolean
**   columns() -> terminal width (80 when unknown)
**   interruptible(f, msgh, ...) -> like xpcall(f, msgh, ...), but Ctrl-C
**       (SIGINT) raises the error "interrupted!" in the running Lua code,
**       as lua.c does: the handler sets a hook that fires at the next Lua
**       instruction, so a C kernel in progress finishes its call first.
**   catch_interrupts(on) -> keeps SIGINT caught between interruptible
**       calls too (on = true) or gives it back (false).
**
** Nothing here raises a Lua error while the terminal is in raw mode: the
** only Lua calls made then are protected, and the terminal is restored
** before the result is pushed.  The line lives in a userdata whose __gc
** frees it, so an error after that point leaks nothing.
*/
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "sys_lua.h"

#define LE_STATE "lualign.lineedit"

enum {
  KEY_CTRL_A = 1, KEY_CTRL_B = 2, KEY_CTRL_C = 3, KEY_CTRL_D = 4, KEY_CTRL_E = 5,
  KEY_CTRL_F = 6, KEY_CTRL_H = 8, KEY_TAB = 9, KEY_CTRL_K = 11, KEY_CTRL_L = 12,
  KEY_ENTER = 13, KEY_CTRL_N = 14, KEY_CTRL_P = 16, KEY_CTRL_U = 21, KEY_CTRL_W = 23,
  KEY_ESC = 27, KEY_BACKSPACE = 127
};

typedef enum { LE_EDITING, LE_DONE, LE_EOF, LE_INTERRUPT } le_status;

/* A growable byte string. */
typedef struct {
  char *b;
  size_t len, cap;
} le_str;

typedef struct {
  le_str line;          /* the text being edited */
  le_str saved;         /* the unfinished line while browsing history */
  le_str out;           /* what one refresh writes */
  size_t pos;           /* cursor, a byte offset at a character boundary */
  const char *prompt;
  size_t prompt_cols;
  int history;          /* stack index of the history list, 0 if none */
  int completer;        /* stack index of the completer, 0 if none */
  lua_Integer hist_back;  /* 0: the line being edited; k: k-th newest entry */
  lua_State *L;
} le_state;

/* ------------------------------------------------------------ strings */

static int le_reserve(le_str *s, size_t extra) {
  if (s->len + extra + 1 <= s->cap) return 1;
  size_t cap = s->cap ? s->cap : 64;
  while (cap < s->len + extra + 1) cap *= 2;
  char *b = realloc(s->b, cap);
  if (b == NULL) return 0;
  s->b = b;
  s->cap = cap;
  return 1;
}

static int le_insert(le_str *s, size_t at, const char *p, size_t n) {
  if (!le_reserve(s, n)) return 0;
  memmove(s->b + at + n, s->b + at, s->len - at);
  memcpy(s->b + at, p, n);
  s->len += n;
  s->b[s->len] = '\0';
  return 1;
}

static void le_erase(le_str *s, size_t from, size_t to) {
  memmove(s->b + from, s->b + to, s->len - to);
  s->len -= to - from;
  if (s->b) s->b[s->len] = '\0';
}

static int le_assign(le_str *s, const char *p, size_t n) {
  s->len = 0;
  return le_insert(s, 0, p, n);
}

static int le_append(le_str *s, const char *p) {
  return le_insert(s, s->len, p, strlen(p));
}

static void le_free(le_str *s) {
  free(s->b);
  s->b = NULL;
  s->len = s->cap = 0;
}

/* -------------------------------------------------------------- UTF-8 */

static int le_is_cont(unsigned char c) { return (c & 0xC0) == 0x80; }

static size_t le_next_char(const le_str *s, size_t i) {
  if (i >= s->len) return s->len;
  i++;
  while (i < s->len && le_is_cont((unsigned char)s->b[i])) i++;
  return i;
}

static size_t le_prev_char(const le_str *s, size_t i) {
  if (i == 0) return 0;
  i--;
  while (i > 0 && le_is_cont((unsigned char)s->b[i])) i--;
  return i;
}

/* Columns taken by bytes [from, to): one per code point. */
static size_t le_cols(const char *b, size_t from, size_t to) {
  size_t n = 0;
  for (size_t i = from; i < to; i++)
    if (!le_is_cont((unsigned char)b[i])) n++;
  return n;
}

/* ----------------------------------------------------------- terminal */

static int le_write(const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(STDOUT_FILENO, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return 0;
    }
    p += w;
    n -= (size_t)w;
  }
  return 1;
}

static int le_write_str(const char *p) { return le_write(p, strlen(p)); }

static int le_columns(void) {
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == -1 || ws.ws_col == 0) return 80;
  return ws.ws_col;
}

/* Raw mode: bytes arrive one by one, unechoed, with Ctrl-C as a byte.
** TCSADRAIN keeps keys typed ahead of the prompt. */
static int le_enable_raw(struct termios *saved) {
  struct termios raw;
  if (tcgetattr(STDIN_FILENO, saved) == -1) return 0;
  raw = *saved;
  raw.c_iflag &= ~(tcflag_t)(BRKINT | ICRNL | INPCK | ISTRIP | IXON);
  raw.c_oflag &= ~(tcflag_t)OPOST;
  raw.c_cflag |= CS8;
  raw.c_lflag &= ~(tcflag_t)(ECHO | ICANON | IEXTEN | ISIG);
  raw.c_cc[VMIN] = 1;
  raw.c_cc[VTIME] = 0;
  return tcsetattr(STDIN_FILENO, TCSADRAIN, &raw) != -1;
}

static void le_disable_raw(const struct termios *saved) {
  tcsetattr(STDIN_FILENO, TCSADRAIN, saved);
}

/* One byte of input; 0 at end of input or on a read error. */
static int le_read_byte(unsigned char *c) {
  for (;;) {
    ssize_t n = read(STDIN_FILENO, c, 1);
    if (n == 1) return 1;
    if (n < 0 && errno == EINTR) continue;
    return 0;
  }
}

static void le_beep(void) { le_write_str("\a"); }

/* ------------------------------------------------------------ display */

/* Redraws the prompt and the line, scrolled horizontally so the cursor
** stays visible. */
static void le_refresh(le_state *st) {
  const le_str *s = &st->line;
  size_t cols = (size_t)le_columns();
  size_t room = cols > st->prompt_cols + 1 ? cols - st->prompt_cols - 1 : 1;
  size_t start = 0, end = s->len;
  while (le_cols(s->b, start, st->pos) > room) start = le_next_char(s, start);
  while (le_cols(s->b, start, end) > room && end > st->pos) end = le_prev_char(s, end);
  st->out.len = 0;
  char move[32];
  size_t cursor = st->prompt_cols + le_cols(s->b, start, st->pos);
  snprintf(move, sizeof move, "\r\x1b[%zuC", cursor);
  int ok = le_append(&st->out, "\r") && le_append(&st->out, st->prompt) &&
           le_insert(&st->out, st->out.len, s->b ? s->b + start : "", end - start) &&
           le_append(&st->out, "\x1b[0K") &&
           le_append(&st->out, cursor > 0 ? move : "\r");
  if (ok) le_write(st->out.b, st->out.len);
}

/* Redraws the finished line in full, letting the terminal wrap it, so a
** line scrolled while editing is all there in the scroll-back. */
static void le_show_whole(le_state *st) {
  st->out.len = 0;
  int ok = le_append(&st->out, "\r") && le_append(&st->out, st->prompt) &&
           le_insert(&st->out, st->out.len, st->line.b, st->line.len) &&
           le_append(&st->out, "\x1b[0K");
  if (ok) le_write(st->out.b, st->out.len);
}

/* Prints the candidates in columns under the line, then redraws it. */
static void le_show_candidates(le_state *st, int list, lua_Integer n) {
  lua_State *L = st->L;
  size_t width = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, list, i);
    if (lua_type(L, -1) == LUA_TSTRING) {
      size_t len;
      const char *w = lua_tolstring(L, -1, &len);
      size_t c = le_cols(w, 0, len);
      if (c > width) width = c;
    }
    lua_pop(L, 1);
  }
  width += 2;
  size_t per_row = (size_t)le_columns() / width;
  if (per_row == 0) per_row = 1;
  le_write_str("\r\n");
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, list, i);
    if (lua_type(L, -1) == LUA_TSTRING) {
      size_t len;
      const char *w = lua_tolstring(L, -1, &len);
      le_write(w, len);
      int last = (size_t)i % per_row == 0 || i == n;
      if (last) {
        le_write_str("\r\n");
      } else {
        for (size_t pad = le_cols(w, 0, len); pad < width; pad++) le_write_str(" ");
      }
    }
    lua_pop(L, 1);
  }
  le_refresh(st);
}

/* ------------------------------------------------------------ history */

static lua_Integer le_history_len(le_state *st) {
  return st->history ? (lua_Integer)lua_rawlen(st->L, st->history) : 0;
}

/* Moves through the history: dir = +1 older, -1 newer. */
static void le_history_move(le_state *st, int dir) {
  lua_State *L = st->L;
  lua_Integer n = le_history_len(st), back = st->hist_back + dir;
  if (back < 0 || back > n) {
    le_beep();
    return;
  }
  if (st->hist_back == 0 && !le_assign(&st->saved, st->line.b ? st->line.b : "", st->line.len)) {
    le_beep();
    return;
  }
  int ok;
  if (back == 0) {
    ok = le_assign(&st->line, st->saved.b ? st->saved.b : "", st->saved.len);
  } else {
    lua_rawgeti(L, st->history, n - back + 1);
    size_t len = 0;
    const char *entry = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : "";
    ok = le_assign(&st->line, entry, len);
    lua_pop(L, 1);
  }
  if (!ok) {
    le_beep();
    return;
  }
  st->hist_back = back;
  st->pos = st->line.len;
  le_refresh(st);
}

/* --------------------------------------------------------- completion */

/* Runs under lua_pcall with (completer, state): completer(text before the
** cursor). */
static int le_call_completer(lua_State *L) {
  le_state *st = lua_touserdata(L, 2);
  lua_pushvalue(L, 1);
  lua_pushlstring(L, st->line.b ? st->line.b : "", st->pos);
  lua_call(L, 1, 2);
  return 2;
}

/* Length of the common prefix of the candidates' bytes. */
static size_t le_common_prefix(lua_State *L, int list, lua_Integer n) {
  size_t common = 0;
  const char *first = NULL;
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, list, i);
    size_t len = 0;
    const char *w = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : "";
    if (first == NULL) {
      first = w;
      common = len;
    } else {
      size_t k = 0;
      while (k < common && k < len && first[k] == w[k]) k++;
      common = k;
    }
    lua_pop(L, 1);   /* the list keeps the strings alive */
  }
  return common;
}

/* Tab: completes the word before the cursor, to the candidates' common
** prefix; lists them when that adds nothing. */
static void le_complete(le_state *st) {
  lua_State *L = st->L;
  if (!st->completer) {
    le_beep();
    return;
  }
  lua_pushcfunction(L, le_call_completer);
  lua_pushvalue(L, st->completer);
  lua_pushlightuserdata(L, st);
  if (lua_pcall(L, 2, 2, 0) != LUA_OK) {
    lua_pop(L, 1);                  /* a failing completer just beeps */
    le_beep();
    return;
  }
  if (!lua_istable(L, -2)) {
    lua_pop(L, 2);
    le_beep();
    return;
  }
  int list = lua_gettop(L) - 1;
  lua_Integer n = (lua_Integer)lua_rawlen(L, list);
  lua_Integer start = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : (lua_Integer)st->pos + 1;
  if (n == 0 || start < 1 || (size_t)start > st->pos + 1) {
    lua_pop(L, 2);
    le_beep();
    return;
  }
  size_t from = (size_t)start - 1, typed = st->pos - from;
  size_t common = le_common_prefix(L, list, n);
  if (common > typed || (n == 1 && common >= typed)) {
    lua_rawgeti(L, list, 1);
    const char *w = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    le_erase(&st->line, from, st->pos);
    st->pos = from;
    if (le_insert(&st->line, from, w, common)) st->pos = from + common;
    lua_pop(L, 1);
    le_refresh(st);
  } else if (n > 1) {
    le_show_candidates(st, list, n);
  } else {
    le_beep();
  }
  lua_pop(L, 2);
}

/* -------------------------------------------------------------- edits */

static void le_insert_bytes(le_state *st, const char *p, size_t n) {
  if (!le_insert(&st->line, st->pos, p, n)) {
    le_beep();
    return;
  }
  st->pos += n;
  le_refresh(st);
}

/* Reads the rest of a UTF-8 sequence that started with c, then inserts it. */
static void le_insert_char(le_state *st, unsigned char c) {
  char seq[4] = {(char)c};
  size_t n = 1, want = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
  while (n < want) {
    unsigned char next;
    if (!le_read_byte(&next)) break;
    seq[n++] = (char)next;
  }
  le_insert_bytes(st, seq, n);
}

static void le_delete_range(le_state *st, size_t from, size_t to) {
  if (from >= to) return;
  le_erase(&st->line, from, to);
  st->pos = from;
  le_refresh(st);
}

static void le_delete_word_before(le_state *st) {
  size_t i = st->pos;
  while (i > 0 && st->line.b[i - 1] == ' ') i--;
  while (i > 0 && st->line.b[i - 1] != ' ') i--;
  le_delete_range(st, i, st->pos);
}

static void le_move(le_state *st, size_t to) {
  st->pos = to;
  le_refresh(st);
}

/* The key a final byte names: arrows, Home, End (also with modifiers, as
** Ctrl-Left sends ESC [ 1 ; 5 D, which moves like Left). */
static void le_cursor_key(le_state *st, unsigned char final) {
  switch (final) {
    case 'A': le_history_move(st, 1); break;
    case 'B': le_history_move(st, -1); break;
    case 'C': le_move(st, le_next_char(&st->line, st->pos)); break;
    case 'D': le_move(st, le_prev_char(&st->line, st->pos)); break;
    case 'H': le_move(st, 0); break;
    case 'F': le_move(st, st->line.len); break;
    default: break;
  }
}

/* ESC [ n ~ : Home (1, 7), End (4, 8), Delete (3). */
static void le_tilde_key(le_state *st, int n) {
  if (n == 1 || n == 7) le_move(st, 0);
  else if (n == 4 || n == 8) le_move(st, st->line.len);
  else if (n == 3) le_delete_range(st, st->pos, le_next_char(&st->line, st->pos));
}

/* After ESC: a CSI sequence (ESC [ parameters final) or SS3 (ESC O final);
** unknown sequences are read to their end and ignored. */
static void le_escape(le_state *st) {
  unsigned char kind, c;
  if (!le_read_byte(&kind)) return;
  if (kind == 'O') {
    if (le_read_byte(&c)) le_cursor_key(st, c);
    return;
  }
  if (kind != '[') return;           /* Alt+key: ignored */
  int first = 0, digits = 1;
  for (int n = 0; n < 16; n++) {     /* parameters, then one final byte */
    if (!le_read_byte(&c)) return;
    if (c >= 0x40 && c <= 0x7E) {
      if (c == '~') le_tilde_key(st, first);
      else le_cursor_key(st, c);
      return;
    }
    if (c >= '0' && c <= '9' && digits) first = first * 10 + (c - '0');
    else digits = 0;
  }
}

/* Handles one key; returns whether editing goes on. */
static le_status le_key(le_state *st, unsigned char c) {
  switch (c) {
    case KEY_ENTER: case '\n': return LE_DONE;
    case KEY_CTRL_C: return LE_INTERRUPT;
    case KEY_CTRL_D:
      if (st->line.len == 0) return LE_EOF;
      le_delete_range(st, st->pos, le_next_char(&st->line, st->pos));
      break;
    case KEY_BACKSPACE: case KEY_CTRL_H:
      le_delete_range(st, le_prev_char(&st->line, st->pos), st->pos);
      break;
    case KEY_TAB: le_complete(st); break;
    case KEY_CTRL_A: le_move(st, 0); break;
    case KEY_CTRL_E: le_move(st, st->line.len); break;
    case KEY_CTRL_B: le_move(st, le_prev_char(&st->line, st->pos)); break;
    case KEY_CTRL_F: le_move(st, le_next_char(&st->line, st->pos)); break;
    case KEY_CTRL_K: le_delete_range(st, st->pos, st->line.len); break;
    case KEY_CTRL_U: le_delete_range(st, 0, st->pos); break;
    case KEY_CTRL_W: le_delete_word_before(st); break;
    case KEY_CTRL_P: le_history_move(st, 1); break;
    case KEY_CTRL_N: le_history_move(st, -1); break;
    case KEY_CTRL_L:
      le_write_str("\x1b[H\x1b[2J");
      le_refresh(st);
      break;
    case KEY_ESC: le_escape(st); break;
    default:
      if (c >= 32) le_insert_char(st, c);
      break;
  }
  return LE_EDITING;
}

static le_status le_edit(le_state *st) {
  le_refresh(st);
  for (;;) {
    unsigned char c;
    if (!le_read_byte(&c)) return st->line.len > 0 ? LE_DONE : LE_EOF;
    le_status status = le_key(st, c);
    if (status != LE_EDITING) return status;
  }
}

/* ------------------------------------------------------------ the API */

static int le_state_gc(lua_State *L) {
  le_state *st = luaL_checkudata(L, 1, LE_STATE);
  le_free(&st->line);
  le_free(&st->saved);
  le_free(&st->out);
  return 0;
}

/* readline(prompt [, history [, completer]]) */
static int le_readline(lua_State *L) {
  const char *prompt = luaL_checkstring(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TFUNCTION);
  if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO))
    return luaL_error(L, "readline: standard input and output must be a terminal");
  lua_settop(L, 3);
  luaL_checkstack(L, 16, "readline");
  le_state *st = lua_newuserdatauv(L, sizeof *st, 0);
  memset(st, 0, sizeof *st);
  luaL_setmetatable(L, LE_STATE);
  st->L = L;
  st->prompt = prompt;
  st->prompt_cols = le_cols(prompt, 0, strlen(prompt));
  st->history = lua_istable(L, 2) ? 2 : 0;
  st->completer = lua_isfunction(L, 3) ? 3 : 0;
  if (!le_assign(&st->line, "", 0)) return luaL_error(L, "readline: not enough memory");

  fflush(stdout);
  struct termios saved;
  if (!le_enable_raw(&saved))
    return luaL_error(L, "readline: cannot set the terminal to raw mode (%s)", strerror(errno));
  le_status status = le_edit(st);
  if (status == LE_DONE) le_show_whole(st);
  le_write_str(status == LE_INTERRUPT ? "^C\r\n" : "\r\n");
  le_disable_raw(&saved);

  switch (status) {
    case LE_EOF:
      lua_pushnil(L);
      lua_pushliteral(L, "eof");
      return 2;
    case LE_INTERRUPT:
      lua_pushnil(L);
      lua_pushliteral(L, "interrupt");
      return 2;
    default:
      lua_pushlstring(L, st->line.b, st->line.len);
      return 1;
  }
}

static int le_isatty(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  luaL_argcheck(L, fd >= 0 && fd <= 2, 1, "expected 0, 1 or 2");
  lua_pushboolean(L, isatty((int)fd));
  return 1;
}

static int le_columns_l(lua_State *L) {
  lua_pushinteger(L, isatty(STDOUT_FILENO) ? le_columns() : 80);
  return 1;
}

/* ---------------------------------------------------------- interrupts */

static lua_State *volatile le_running = NULL;

static void le_stop(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

/* Every Ctrl-C sets the hook again (lua_sethook may be called from a signal
** handler); Ctrl-\ still quits if a C call never returns. */
static void le_on_sigint(int sig) {
  (void)sig;
  lua_State *L = le_running;
  if (L != NULL) lua_sethook(L, le_stop, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* Whether catch_interrupts(true) holds the handler, and what it replaced. */
static int le_caught = 0;
static struct sigaction le_saved_action;

static int le_set_handler(struct sigaction *previous) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = le_on_sigint;
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  return sigaction(SIGINT, &action, previous) != -1;
}

/* catch_interrupts(on): with on, SIGINT no longer ends the process while no
** interruptible call runs (the REPL sets it for its whole session, so a
** Ctrl-C that comes between two evaluations is not fatal). */
static int le_catch_interrupts(lua_State *L) {
  int on = lua_toboolean(L, 1);
  if (on && !le_caught) {
    if (!le_set_handler(&le_saved_action))
      return luaL_error(L, "catch_interrupts: cannot catch SIGINT (%s)", strerror(errno));
    le_caught = 1;
  } else if (!on && le_caught) {
    sigaction(SIGINT, &le_saved_action, NULL);
    le_caught = 0;
  }
  return 0;
}

/* interruptible(f, msgh, ...) */
static int le_interruptible(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 2;
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 2);              /* msgh, f, args... above the originals */
  int msgh = 3;
  int own_handler = !le_caught;
  struct sigaction previous;
  if (own_handler && !le_set_handler(&previous))
    return luaL_error(L, "interruptible: cannot catch SIGINT (%s)", strerror(errno));
  lua_State *outer = le_running;
  le_running = L;
  int status = lua_pcall(L, nargs, LUA_MULTRET, msgh);
  le_running = outer;
  if (outer == NULL && lua_gethook(L) == le_stop)
    lua_sethook(L, NULL, 0, 0);     /* a Ctrl-C that came just too late */
  if (own_handler) sigaction(SIGINT, &previous, NULL);
  lua_pushboolean(L, status == LUA_OK);
  lua_replace(L, msgh);             /* the flag where the handler was */
  return lua_gettop(L) - msgh + 1;
}

static const luaL_Reg le_funcs[] = {
  {"readline", le_readline}, {"isatty", le_isatty}, {"columns", le_columns_l},
  {"interruptible", le_interruptible}, {"catch_interrupts", le_catch_interrupts},
  {NULL, NULL}
};

void ls_open_lineedit(lua_State *L) {
  if (luaL_newmetatable(L, LE_STATE)) {
    lua_pushcfunction(L, le_state_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  luaL_setfuncs(L, le_funcs, 0);
  lua_setfield(L, -2, "lineedit");
}
