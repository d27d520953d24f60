/* cmd_bench.c: placeholder until this command is written (see the open issues). */
#include "cli/commands.h"
#include <stdio.h>

int loom_cmd_bench(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "loom: 'bench' is not implemented yet\n");
    return 1;
}
