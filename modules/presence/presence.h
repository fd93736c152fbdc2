/*
** presence.h — what the parts of brisk.presence (presence.c, glob.c,
** engine.c, sign.c) share: the JID glob compiler and the openers that
** register each part's functions in the module table.
*/
#ifndef PRESENCE_H
#define PRESENCE_H

#include <stdint.h>
#include "brisk.h"

/* Tokens of a compiled glob: a byte value 0..255 stands for itself. */
#define PRESENCE_GLOB_STAR (-1)   /* any run of characters, possibly empty */
#define PRESENCE_GLOB_ANY  (-2)   /* exactly one UTF-8 character */

/* The longest pattern accepted, in bytes: a bare JID is at most 2047 bytes. */
#define PRESENCE_GLOB_MAXLEN 2047

/*
** Compile pattern p (len bytes) into tok, which must have room for len + 2
** tokens. Returns the number of tokens, or -1 and sets *err to a static
** message. A pattern with no '@' names a host and means "*@host".
*/
int presence_glob_compile(const char *p, size_t len, int16_t *tok,
                          const char **err);

/* 1 when the bare JID s (len bytes) matches the n compiled tokens. */
int presence_glob_match(const int16_t *tok, int n, const char *s,
                        size_t len);

void presence_open_glob(lua_State *L, int mod);
void presence_open_engine(lua_State *L, int mod);
void presence_open_sign(lua_State *L, int mod);

#endif
