/* cmd_chat_render.c: placeholder until this command is written (see the open issues). */
#include "cli/commands.h"
#include <stdio.h>

int loom_cmd_chat_render(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "loom: 'chat_render' is not implemented yet\n");
    return 1;
}
