/* cmd_make_model.c: placeholder until this command is written (see the open issues). */
#include "cli/commands.h"
#include <stdio.h>

int loom_cmd_make_model(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "loom: 'make_model' is not implemented yet\n");
    return 1;
}
