/* util.h: small helpers every module uses: whole-file reads, path joins, int lists. */
#ifndef LOOM_CORE_UTIL_H
#define LOOM_CORE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Reads a whole file into a NUL-terminated buffer (caller frees). LOOM_EIO with the path on failure. */
int loom_read_file(const char *path, char **data, size_t *len);
int loom_write_file(const char *path, const void *data, size_t len);
bool loom_file_exists(const char *path);
/* dir + "/" + name in a new string (caller frees). */
char *loom_path_join(const char *dir, const char *name);
/* Parses "1,2,3" into a new int32 array (caller frees). LOOM_EINVAL names the bad item. */
int loom_parse_int_list(const char *s, int32_t **out, int *n);

#endif
