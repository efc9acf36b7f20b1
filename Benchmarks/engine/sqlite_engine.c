/*
 * The SQLite engine alone: the limit beside the gateway's ingestion figures (make bench, "Ingestion").
 *
 * Inserts ROWS rows shaped like the gateway's telemetry rows (10 devices, 64-byte payloads, no properties)
 * into the gateway's `messages` table and index, in WAL mode with synchronous=FULL, in transactions of
 * BATCH rows, with one prepared statement whose binds point at the row's bytes (SQLITE_STATIC), and
 * prints the rows per second. This is what the gateway's writer does per batch without the gateway.
 *
 *   cc -O2 -o sqlite_engine sqlite_engine.c -lsqlite3
 *   ./sqlite_engine DATABASE ROWS BATCH
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void check(int rc, sqlite3 *db, const char *what) {
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        fprintf(stderr, "sqlite_engine: %s: %s\n", what, sqlite3_errmsg(db));
        exit(1);
    }
}

static void exec(sqlite3 *db, const char *sql) {
    check(sqlite3_exec(db, sql, NULL, NULL, NULL), db, sql);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: sqlite_engine DATABASE ROWS BATCH\n");
        return 2;
    }
    long rows = atol(argv[2]), batch = atol(argv[3]);
    if (rows <= 0 || batch <= 0) {
        fprintf(stderr, "sqlite_engine: ROWS and BATCH must be positive\n");
        return 2;
    }
    sqlite3 *db;
    check(sqlite3_open(argv[1], &db), db, "open");
    exec(db, "PRAGMA journal_mode=WAL");
    exec(db, "PRAGMA synchronous=FULL");
    exec(db,
         "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, received_at INTEGER NOT NULL, "
         "client_id TEXT NOT NULL, topic TEXT NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, "
         "payload BLOB NOT NULL, properties BLOB)");
    exec(db, "CREATE INDEX messages_topic_time ON messages (topic, received_at)");
    sqlite3_stmt *insert;
    check(sqlite3_prepare_v2(db,
                             "INSERT INTO messages (received_at, client_id, topic, qos, retain, payload, properties) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             -1, &insert, NULL),
          db, "prepare");
    char clients[10][16], topics[10][40];
    for (int d = 0; d < 10; d++) {
        snprintf(clients[d], sizeof clients[d], "sim-%d", d);
        snprintf(topics[d], sizeof topics[d], "devices/sim-%d/telemetry", d);
    }
    unsigned char payload[64];
    memset(payload, 'x', sizeof payload);
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long done = 0;
    while (done < rows) {
        exec(db, "BEGIN IMMEDIATE");
        for (long i = 0; i < batch; i++, done++) {
            int d = (int)(done % 10);
            sqlite3_bind_int64(insert, 1, 1700000000000LL + done);
            sqlite3_bind_text(insert, 2, clients[d], -1, SQLITE_STATIC);
            sqlite3_bind_text(insert, 3, topics[d], -1, SQLITE_STATIC);
            sqlite3_bind_int(insert, 4, 0);
            sqlite3_bind_int(insert, 5, 0);
            sqlite3_bind_blob(insert, 6, payload, sizeof payload, SQLITE_STATIC);
            sqlite3_bind_null(insert, 7);
            check(sqlite3_step(insert), db, "insert");
            sqlite3_reset(insert);
        }
        exec(db, "COMMIT");
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds = (double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) / 1e9;
    printf("%.0f\n", (double)done / seconds);
    sqlite3_finalize(insert);
    sqlite3_close(db);
    return 0;
}
