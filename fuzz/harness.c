/*
** harness.c -- the libFuzzer entry points. The Lua state is the one the
** switchboard executable builds (sb_new_state: the same allocator and
** core.* modules); fuzz/runner.lua loads the target named by
** $SB_FUZZ_TARGET (fuzz/targets/<name>.lua) and checks each input. A
** check that fails (a crash, a sanitizer report, or a Lua error the target
** did not declare expected) aborts, which libFuzzer records as a crash.
**
** The Lua code the targets drive is invisible to the compiler's coverage:
** a line hook feeds (function, line) edges into libFuzzer's extra counters
** so that new paths through the Lua code count as new coverage.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

#ifndef SB_FUZZ_ROOT
#define SB_FUZZ_ROOT "."
#endif

#define NCOUNTERS 65536u

__attribute__((used, section("__libfuzzer_extra_counters")))
static uint8_t lua_counters[NCOUNTERS];

static lua_State *state;
static int check_ref = LUA_NOREF;
static uint32_t prev_edge;

/* The hash of a chunk's source name, cached by the name's address (a
** chunk keeps its name for its life; a stale entry only adds noise). */
#define NSOURCES 256u
static struct { const char *p; uint32_t h; } sources[NSOURCES];

static uint32_t
source_hash(const char *s)
{
  uintptr_t slot = ((uintptr_t)s >> 4) % NSOURCES;
  if (sources[slot].p == s)
    return sources[slot].h;
  uint32_t h = 2166136261u;
  for (const char *c = s; *c != '\0'; c++)
    h = (h ^ (uint8_t)*c) * 16777619u;
  sources[slot].p = s;
  sources[slot].h = h;
  return h;
}

static void
line_hook(lua_State *L, lua_Debug *ar)
{
  if (lua_getinfo(L, "S", ar) == 0 || ar->source == NULL)
    return;
  uint32_t cur = source_hash(ar->source) ^ ((uint32_t)ar->currentline * 2654435761u);
  uint32_t edge = (cur ^ (prev_edge >> 1)) % NCOUNTERS;
  if (lua_counters[edge] != 255)
    lua_counters[edge]++;
  prev_edge = cur;
}

/* At exit the state closes: the targets' temporary directories go. */
static void
close_state(void)
{
  if (state != NULL) {
    lua_State *L = state;
    state = NULL;
    lua_close(L);
  }
}

static void
fail(const char *what)
{
  fprintf(stderr, "fuzz: %s\n", what);
  fflush(stderr);
  abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void)argc;
  (void)argv;
  const char *target = getenv("SB_FUZZ_TARGET");
  if (target == NULL || target[0] == '\0')
    fail("set SB_FUZZ_TARGET to the name of a target in fuzz/targets/");
  const char *root = getenv("SWITCHBOARD_HOME");
  if (root == NULL || root[0] == '\0')
    root = SB_FUZZ_ROOT;
  state = sb_new_state(root);
  if (state == NULL)
    fail("cannot create the Lua state");
  lua_State *L = state;
  lua_pushcfunction(L, sb_traceback);
  lua_getglobal(L, "require");
  lua_pushstring(L, "fuzz.runner");
  if (lua_pcall(L, 1, 1, -3) != LUA_OK)
    fail(lua_tostring(L, -1));
  lua_getfield(L, -1, "load");
  lua_pushstring(L, target);
  lua_pushstring(L, root);
  if (lua_pcall(L, 2, 1, -5) != LUA_OK)
    fail(lua_tostring(L, -1));
  if (!lua_isfunction(L, -1))
    fail("fuzz.runner.load did not return a check function");
  check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  if (atexit(close_state) != 0)
    fail("atexit failed");
  if (getenv("SB_FUZZ_NO_LUA_COVERAGE") == NULL)
    lua_sethook(L, line_hook, LUA_MASKLINE, 0);
  return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  lua_State *L = state;
  prev_edge = 0;
  lua_pushcfunction(L, sb_traceback);
  lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 2, -3) != LUA_OK)
    fail(lua_tostring(L, -1));
  if (!lua_toboolean(L, -2)) {
    const char *msg = lua_tostring(L, -1);
    fail(msg != NULL ? msg : "the target's check failed");
  }
  lua_settop(L, 0);
  return 0;
}
