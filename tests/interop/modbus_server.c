/* A Modbus TCP server on libmodbus, for the interoperability tests.
 *
 * Usage: modbus_server PORT
 * Serves every unit id on 127.0.0.1:PORT, one client at a time, until killed. Prints "ready"
 * once listening. Its tables, 1000 entries each, start as:
 *   coil i = (i % 3 == 0), discrete input i = (i % 2 == 1),
 *   holding register i = (i * 7) & 0xFFFF, input register i = 1000 + i.
 * Writes change the tables as usual.
 */
#include <errno.h>
#include <modbus.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define N 1000

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    modbus_t *ctx = modbus_new_tcp("127.0.0.1", atoi(argv[1]));
    modbus_mapping_t *map = modbus_mapping_new(N, N, N, N);
    if (ctx == NULL || map == NULL) {
        fprintf(stderr, "modbus_server: cannot allocate: %s\n", modbus_strerror(errno));
        return 1;
    }
    for (int i = 0; i < N; i++) {
        map->tab_bits[i] = (i % 3 == 0);
        map->tab_input_bits[i] = (i % 2 == 1);
        map->tab_registers[i] = (uint16_t)((i * 7) & 0xFFFF);
        map->tab_input_registers[i] = (uint16_t)(1000 + i);
    }
    int listener = modbus_tcp_listen(ctx, 1);
    if (listener < 0) {
        fprintf(stderr, "modbus_server: cannot listen: %s\n", modbus_strerror(errno));
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int client = modbus_tcp_accept(ctx, &listener);
        if (client < 0) {
            continue;
        }
        uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
        for (;;) {
            int rc = modbus_receive(ctx, query);
            if (rc > 0) {
                modbus_reply(ctx, query, rc, map);
            } else if (rc == -1) {
                break; /* the client closed the connection */
            }
        }
        close(client);
    }
}
