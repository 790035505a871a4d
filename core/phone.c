/*
** phone.c -- core.phone: phone numbers checked by libphonenumber (through
** the C API of phonenumber.h). phone.parse(s) tells whether a number in
** international form is valid, its region and its type (mobile,
** premium_rate, ...), and its E.164 form.
*/
#include <string.h>

#include "core.h"
#include "phonenumber.h"

/* Longer input is no phone number; bounds the work of one call (policies
** call it, and their instruction budget does not count C time). */
#define PHONE_MAX_INPUT 64

/* phone.parse(s) -> { valid, possible, country_code, region, type, e164,
** extension, reason } | nil, err */
static int
l_parse(lua_State *L)
{
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  if (len > PHONE_MAX_INPUT)
    return sb_pushfail(L, "too long (more than " SB_STR(PHONE_MAX_INPUT) " characters)");
  if (strlen(s) != len)
    return sb_pushfail(L, "not a phone number (a NUL character)");
  /* the metadata (a few MiB) is read at the first number, not at start:
  ** an idle runtime does not hold it */
  static int ready;
  if (!ready) {
    if (pn_init() != 0)
      return luaL_error(L, "core.phone: cannot load libphonenumber's metadata");
    ready = 1;
  }
  struct pn_info info;
  int rc = pn_parse(s, &info);
  if (rc != PN_OK)
    return sb_pushfail(L, pn_strerror(rc));
  lua_createtable(L, 0, 8);
  lua_pushboolean(L, info.valid);
  lua_setfield(L, -2, "valid");
  lua_pushboolean(L, info.possible);
  lua_setfield(L, -2, "possible");
  lua_pushinteger(L, info.country_code);
  lua_setfield(L, -2, "country_code");
  if (info.region[0] != '\0') {
    lua_pushstring(L, info.region);
    lua_setfield(L, -2, "region");
  }
  lua_pushstring(L, pn_type_name((int)info.type));
  lua_setfield(L, -2, "type");
  lua_pushstring(L, info.e164);
  lua_setfield(L, -2, "e164");
  if (info.extension[0] != '\0') {
    lua_pushstring(L, info.extension);
    lua_setfield(L, -2, "extension");
  }
  if (info.why != NULL) {
    lua_pushstring(L, info.why);
    lua_setfield(L, -2, "reason");
  }
  return 1;
}

int
luaopen_core_phone(lua_State *L)
{
  static const luaL_Reg fns[] = {
    { "parse", l_parse },
    { NULL, NULL },
  };
  luaL_newlib(L, fns);
  return 1;
}
