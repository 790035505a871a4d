/*
** jose.c -- core.jose: JSON Web Signatures through cjose (OpenSSL and
** jansson underneath): a set of public keys imported from JWK JSON, and
** the verification of a compact JWS against it, for OAuth access tokens
** (RFC 7515, 7517, 7518, 9068). Only asymmetric algorithms are accepted
** (RSA PKCS#1 and PSS, ECDSA): "none" and the HMAC algorithms never verify, whatever
** the caller allows, so a public key can never serve as an HMAC secret.
** The key is picked by the token's "kid" and must fit the algorithm (an
** RSA key for RS256 or PS256 and the like, an EC key on the algorithm's curve for ES256, ES384, ES512).
**
** sign, generate and public_key exist for tests and tools that need a
** local issuer; the server only verifies.
*/
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <cjose/cjose.h>

#include "core.h"

#define KEYSET_MT "core.jose.KeySet"
#define MAX_KEYS 64
#define MAX_TOKEN 16384
#define MAX_JWK 16384
#define MIN_RSA_BITS 2048

typedef struct {
  int n;
  bool closed;
  cjose_jwk_t *keys[MAX_KEYS];
} keyset;

/* The algorithms this module verifies: the key type, and the curve for EC. */
typedef struct {
  const char *name;
  cjose_jwk_kty_t kty;
  int curve;
} alg_info;

static const alg_info ALGS[] = {
  { "RS256", CJOSE_JWK_KTY_RSA, 0 },
  { "RS384", CJOSE_JWK_KTY_RSA, 0 },
  { "RS512", CJOSE_JWK_KTY_RSA, 0 },
  { "PS256", CJOSE_JWK_KTY_RSA, 0 },
  { "PS384", CJOSE_JWK_KTY_RSA, 0 },
  { "PS512", CJOSE_JWK_KTY_RSA, 0 },
  { "ES256", CJOSE_JWK_KTY_EC, CJOSE_JWK_EC_P_256 },
  { "ES384", CJOSE_JWK_KTY_EC, CJOSE_JWK_EC_P_384 },
  { "ES512", CJOSE_JWK_KTY_EC, CJOSE_JWK_EC_P_521 },
};

static const alg_info *
find_alg(const char *name)
{
  for (size_t i = 0; i < sizeof ALGS / sizeof ALGS[0]; i++)
    if (strcmp(ALGS[i].name, name) == 0)
      return &ALGS[i];
  return NULL;
}

static void
keyset_release(keyset *ks)
{
  for (int i = 0; i < ks->n; i++) {
    cjose_jwk_release(ks->keys[i]);
    ks->keys[i] = NULL;
  }
  ks->n = 0;
  ks->closed = true;
}

static keyset *
check_keyset(lua_State *L, int idx)
{
  keyset *ks = luaL_checkudata(L, idx, KEYSET_MT);
  if (ks->closed)
    luaL_error(L, "attempt to use a closed key set");
  return ks;
}

/* A string argument without NUL bytes. */
static const char *
check_text(lua_State *L, int idx, size_t *len)
{
  const char *s = luaL_checklstring(L, idx, len);
  luaL_argcheck(L, strlen(s) == *len, idx, "contains a NUL byte");
  return s;
}

/* Whether the key fits the algorithm (type, curve, RSA size). */
static bool
key_fits(const cjose_jwk_t *jwk, const alg_info *alg)
{
  cjose_err err;
  if (cjose_jwk_get_kty(jwk, &err) != alg->kty)
    return false;
  if (alg->kty == CJOSE_JWK_KTY_EC)
    return (int)cjose_jwk_EC_get_curve(jwk, &err) == alg->curve;
  return cjose_jwk_get_keysize(jwk, &err) >= MIN_RSA_BITS;
}

/* jose.keyset({ jwk_json, ... }) -> KeySet or nil, "key N: reason".
** Each item is one JWK (a JSON object text). Only RSA and EC keys are
** kept; a symmetric ("oct") key is refused. */
static int
l_keyset(lua_State *L)
{
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer count = luaL_len(L, 1);
  luaL_argcheck(L, count <= MAX_KEYS, 1, "too many keys (at most 64)");
  keyset *ks = lua_newuserdatauv(L, sizeof *ks, 0);
  memset(ks, 0, sizeof *ks);
  ks->closed = true;
  luaL_setmetatable(L, KEYSET_MT);
  ks->closed = false;
  for (lua_Integer i = 1; i <= count; i++) {
    size_t len;
    const char *json = lua_geti(L, 1, i) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
    if (json == NULL)
      return luaL_error(L, "bad argument #1 to 'keyset' (item %d is not a string)", (int)i);
    if (strlen(json) != len || len > MAX_JWK) {
      lua_pushnil(L);
      lua_pushfstring(L, "key %d: not a usable JWK", (int)i);
      keyset_release(ks);
      return 2;
    }
    cjose_err err;
    cjose_jwk_t *jwk = cjose_jwk_import(json, len, &err);
    lua_pop(L, 1);
    if (jwk == NULL) {
      keyset_release(ks);
      lua_pushnil(L);
      lua_pushfstring(L, "key %d: not a valid JWK", (int)i);
      return 2;
    }
    ks->keys[ks->n++] = jwk;
    cjose_jwk_kty_t kty = cjose_jwk_get_kty(jwk, &err);
    if (kty != CJOSE_JWK_KTY_RSA && kty != CJOSE_JWK_KTY_EC) {
      keyset_release(ks);
      lua_pushnil(L);
      lua_pushfstring(L, "key %d: only RSA and EC keys are accepted", (int)i);
      return 2;
    }
  }
  return 1;
}

static int
ks_close(lua_State *L)
{
  keyset *ks = luaL_checkudata(L, 1, KEYSET_MT);
  if (!ks->closed)
    keyset_release(ks);
  return 0;
}

/* keyset:count() -> the number of keys */
static int
ks_count(lua_State *L)
{
  keyset *ks = check_keyset(L, 1);
  lua_pushinteger(L, ks->n);
  return 1;
}

/* keyset:kids() -> array of the keys' "kid" values (keys without one are
** left out) */
static int
ks_kids(lua_State *L)
{
  keyset *ks = check_keyset(L, 1);
  lua_createtable(L, ks->n, 0);
  int out = 0;
  for (int i = 0; i < ks->n; i++) {
    cjose_err err;
    const char *kid = cjose_jwk_get_kid(ks->keys[i], &err);
    if (kid != NULL) {
      lua_pushstring(L, kid);
      lua_rawseti(L, -2, ++out);
    }
  }
  return 1;
}

static int
fail(lua_State *L, const char *msg, const char *code)
{
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, code);
  return 3;
}

/* Whether alg is in the caller's array of allowed names (arg idx). */
static bool
allowed(lua_State *L, int idx, const char *alg)
{
  lua_Integer n = luaL_len(L, idx);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, idx, i);
    const char *a = lua_tostring(L, -1);
    bool same = a != NULL && strcmp(a, alg) == 0;
    lua_pop(L, 1);
    if (same)
      return true;
  }
  return false;
}

/* The header's string member attr: *out NULL when absent; false when it is
** present but not a string. */
static bool
header_string(cjose_header_t *hdr, const char *attr, const char **out)
{
  cjose_err err;
  *out = cjose_header_get(hdr, attr, &err);
  if (*out != NULL)
    return true;
  char *raw = cjose_header_get_raw(hdr, attr, &err);
  if (raw == NULL)
    return true;
  cjose_get_dealloc()(raw);
  return false;
}

/* keyset:verify(token, algs) -> payload, alg, kid | nil, err, code.
** algs: array of the algorithm names the caller accepts (of RS256 RS384
** RS512 PS256 PS384 PS512 ES256 ES384 ES512; others never verify). code:
** "malformed" (not a compact JWS), "alg" (an algorithm not accepted, or a
** key that does not fit it), "kid" (no key with the token's kid: the
** caller may fetch the issuer's keys again), "signature" (no key verifies
** it). The payload is returned only when the signature verifies. */
static int
ks_verify(lua_State *L)
{
  keyset *ks = check_keyset(L, 1);
  size_t len;
  const char *token = check_text(L, 2, &len);
  luaL_checktype(L, 3, LUA_TTABLE);
  if (len > MAX_TOKEN)
    return fail(L, "token too long", "malformed");

  cjose_err err;
  cjose_jws_t *jws = cjose_jws_import(token, len, &err);
  if (jws == NULL)
    return fail(L, "not a signed JWS in compact form", "malformed");
  cjose_header_t *hdr = cjose_jws_get_protected(jws);
  const char *alg_name, *kid, *crit;
  const char *msg = NULL, *code = NULL;
  const alg_info *alg = NULL;
  if (hdr == NULL || !header_string(hdr, CJOSE_HDR_ALG, &alg_name) || alg_name == NULL) {
    msg = "the token's header has no alg", code = "malformed";
  } else if (!header_string(hdr, CJOSE_HDR_KID, &kid)) {
    msg = "the token's kid is not a string", code = "malformed";
  } else if (!header_string(hdr, "crit", &crit) || crit != NULL) {
    msg = "the token has critical header parameters", code = "malformed";
  } else if ((alg = find_alg(alg_name)) == NULL || !allowed(L, 3, alg_name)) {
    msg = "the token's signing algorithm is not accepted", code = "alg";
  }
  if (msg != NULL) {
    cjose_jws_release(jws);
    return fail(L, msg, code);
  }

  bool kid_found = false, fit_found = false, ok = false;
  for (int i = 0; i < ks->n && !ok; i++) {
    cjose_jwk_t *jwk = ks->keys[i];
    if (kid != NULL) {
      const char *k = cjose_jwk_get_kid(jwk, &err);
      if (k == NULL || strcmp(k, kid) != 0)
        continue;
    }
    kid_found = true;
    if (!key_fits(jwk, alg))
      continue;
    fit_found = true;
    ok = cjose_jws_verify(jws, jwk, &err);
  }
  if (!ok) {
    cjose_jws_release(jws);
    if (!kid_found)
      return fail(L, kid != NULL ? "no key with the token's kid" : "no key", "kid");
    if (!fit_found)
      return fail(L, "the token's key does not fit its signing algorithm", "alg");
    return fail(L, "the token's signature does not verify", "signature");
  }
  uint8_t *plain = NULL;
  size_t plain_len = 0;
  if (!cjose_jws_get_plaintext(jws, &plain, &plain_len, &err)) {
    cjose_jws_release(jws);
    return fail(L, "the token has no payload", "malformed");
  }
  lua_pushlstring(L, (const char *)plain, plain_len);
  lua_pushstring(L, alg_name);
  if (kid != NULL)
    lua_pushstring(L, kid);
  else
    lua_pushnil(L);
  cjose_jws_release(jws); /* owns plain, alg_name and kid */
  return 3;
}

static int
ks_tostring(lua_State *L)
{
  keyset *ks = luaL_checkudata(L, 1, KEYSET_MT);
  if (ks->closed)
    lua_pushliteral(L, "core.jose.KeySet (closed)");
  else
    lua_pushfstring(L, "core.jose.KeySet (%d keys)", ks->n);
  return 1;
}

/* Push cjose's JSON text s (allocated by cjose) as a Lua string, or nil, err. */
static int
push_cjose_json(lua_State *L, char *s, const char *what)
{
  if (s == NULL) {
    lua_pushnil(L);
    lua_pushstring(L, what);
    return 2;
  }
  lua_pushstring(L, s);
  cjose_get_dealloc()(s);
  return 1;
}

/* jose.generate("RSA" | "EC", kid?) -> private JWK JSON: a new RSA-2048
** key or EC P-256 key, for tests and tools. */
static int
l_generate(lua_State *L)
{
  const char *kind = luaL_checkstring(L, 1);
  size_t kid_len = 0;
  const char *kid = luaL_optlstring(L, 2, NULL, &kid_len);
  cjose_err err;
  cjose_jwk_t *jwk;
  if (strcmp(kind, "RSA") == 0) {
    static const uint8_t e[] = { 0x01, 0x00, 0x01 };
    jwk = cjose_jwk_create_RSA_random(2048, e, sizeof e, &err);
  } else if (strcmp(kind, "EC") == 0) {
    jwk = cjose_jwk_create_EC_random(CJOSE_JWK_EC_P_256, &err);
  } else {
    return luaL_argerror(L, 1, "must be \"RSA\" or \"EC\"");
  }
  if (jwk == NULL) {
    lua_pushnil(L);
    lua_pushliteral(L, "key generation failed");
    return 2;
  }
  if (kid != NULL && !cjose_jwk_set_kid(jwk, kid, kid_len, &err)) {
    cjose_jwk_release(jwk);
    lua_pushnil(L);
    lua_pushliteral(L, "could not set the kid");
    return 2;
  }
  char *json = cjose_jwk_to_json(jwk, true, &err);
  cjose_jwk_release(jwk);
  return push_cjose_json(L, json, "could not export the key");
}

/* jose.public_key(jwk_json) -> the public part as JWK JSON, or nil, err */
static int
l_public_key(lua_State *L)
{
  size_t len;
  const char *json = check_text(L, 1, &len);
  cjose_err err;
  cjose_jwk_t *jwk = cjose_jwk_import(json, len, &err);
  if (jwk == NULL) {
    lua_pushnil(L);
    lua_pushliteral(L, "not a valid JWK");
    return 2;
  }
  char *pub = cjose_jwk_to_json(jwk, false, &err);
  cjose_jwk_release(jwk);
  return push_cjose_json(L, pub, "could not export the key");
}

/* jose.sign(jwk_json, header, payload) -> compact JWS, or nil, err.
** header: table of string members ("alg" required, "kid", "typ", …);
** the key may be RSA, EC or oct (HMAC): signing exists for tests that
** play an issuer, including a forger's HS256 token. */
static int
l_sign(lua_State *L)
{
  size_t len, plen;
  const char *json = check_text(L, 1, &len);
  luaL_checktype(L, 2, LUA_TTABLE);
  const char *payload = luaL_checklstring(L, 3, &plen);
  cjose_err err;
  cjose_header_t *hdr = cjose_header_new(&err);
  if (hdr == NULL)
    return luaL_error(L, "not enough memory");
  lua_pushnil(L);
  while (lua_next(L, 2) != 0) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (k == NULL || v == NULL) {
      cjose_header_release(hdr);
      return luaL_argerror(L, 2, "header members must be strings");
    }
    if (!cjose_header_set(hdr, k, v, &err)) {
      cjose_header_release(hdr);
      return luaL_error(L, "not enough memory");
    }
    lua_pop(L, 1);
  }
  cjose_jwk_t *jwk = cjose_jwk_import(json, len, &err);
  if (jwk == NULL) {
    cjose_header_release(hdr);
    lua_pushnil(L);
    lua_pushliteral(L, "not a valid JWK");
    return 2;
  }
  cjose_jws_t *jws = cjose_jws_sign(jwk, hdr, (const uint8_t *)payload, plen, &err);
  cjose_jwk_release(jwk);
  cjose_header_release(hdr);
  if (jws == NULL) {
    lua_pushnil(L);
    lua_pushfstring(L, "signing failed: %s", err.message ? err.message : "?");
    return 2;
  }
  const char *ser = NULL;
  if (!cjose_jws_export(jws, &ser, &err) || ser == NULL) {
    cjose_jws_release(jws);
    lua_pushnil(L);
    lua_pushliteral(L, "could not serialize the JWS");
    return 2;
  }
  lua_pushstring(L, ser);
  cjose_jws_release(jws);
  return 1;
}

int
luaopen_core_jose(lua_State *L)
{
  static const luaL_Reg ks_methods[] = {
    { "verify", ks_verify },
    { "count", ks_count },
    { "kids", ks_kids },
    { "close", ks_close },
    { NULL, NULL },
  };
  static const luaL_Reg funcs[] = {
    { "keyset", l_keyset },
    { "generate", l_generate },
    { "public_key", l_public_key },
    { "sign", l_sign },
    { NULL, NULL },
  };
  static const luaL_Reg ks_meta[] = {
    { "__gc", ks_close },
    { "__close", ks_close },
    { "__tostring", ks_tostring },
    { NULL, NULL },
  };
  sb_createmeta(L, KEYSET_MT, ks_meta, ks_methods);
  luaL_newlib(L, funcs);
  return 1;
}
