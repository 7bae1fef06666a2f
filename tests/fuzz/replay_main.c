/*
 * replay_main: runs a libFuzzer target over files, without libFuzzer.
 *
 * Linked with one tests/fuzz/fuzz_*.c into build/fuzz/replay_<target> by a
 * plain compiler (no clang, no sanitizer needed), so `make fuzz-replay`
 * replays the seed corpus on every `make test`. Each file named on the
 * command line is read whole into a block of exactly its size (a read past
 * the end is then as visible to a sanitizer as under libFuzzer) and given
 * to LLVMFuzzerTestOneInput() once. A target's failed check aborts the
 * process; a file that cannot be read is an error. Owns each file's copy
 * until the target returns. One thread.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPLAY_MAX_INPUT (16u << 20) /* bytes: larger files are refused */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads <path> into a new block of exactly its size (*<size> bytes).
 * Returns it (the caller frees), or NULL with a message on stderr. */
static uint8_t *read_input(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    uint8_t *data = NULL;
    long len;

    if (!f) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == -1 || (len = ftell(f)) == -1 || fseek(f, 0, SEEK_SET) == -1) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        goto fail;
    }
    if ((unsigned long)len > REPLAY_MAX_INPUT) {
        fprintf(stderr, "replay: %s: larger than %u bytes\n", path, REPLAY_MAX_INPUT);
        goto fail;
    }
    data = malloc(len ? (size_t)len : 1); /* freed by main() after the run */
    if (!data) {
        fprintf(stderr, "replay: %s: out of memory\n", path);
        goto fail;
    }
    if (fread(data, 1, (size_t)len, f) != (size_t)len) {
        fprintf(stderr, "replay: %s: short read\n", path);
        goto fail;
    }
    fclose(f);
    *size = (size_t)len;
    return data;
fail:
    free(data);
    fclose(f);
    return NULL;
}

int main(int argc, char **argv)
{
    unsigned replayed = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        size_t size;
        uint8_t *data = read_input(argv[i], &size);
        if (!data)
            return 1;
        LLVMFuzzerTestOneInput(data, size);
        free(data);
        replayed++;
    }
    printf("replayed %u inputs\n", replayed);
    return 0;
}
