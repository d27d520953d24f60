/* cmd_tokenize.c: placeholder until this command is written (see the open issues). */
#include "cli/commands.h"
#include <stdio.h>

int loom_cmd_tokenize(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "loom: 'tokenize' is not implemented yet\n");
    return 1;
}

int loom_cmd_detokenize(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "loom: 'detokenize' is not implemented yet\n");
    return 1;
}
