/* run_config_doc.c: the run config's key reference (docs/USER_GUIDE.md "The run config"),
   printed from the key table so that the documentation cannot drift from the code:
   `effdm finetune --keys` prints it, and test_run_config checks the guide holds it verbatim. */
#include <stdio.h>
#include <string.h>

#include "io/cfg.h"
#include "run/run_config_keys.h"

// Headings that say more than the group's name.
static const char *group_note(const char *group) {
    if (!strcmp(group, "sample")) return " (grids during fine-tuning)";
    return "";
}

// The default of row k under config d, as the table shows it.
static void default_text(const RunConfig *d, const KeyDesc *k, char *buf, size_t n) {
    switch (k->type) {
    case K_ENUM: snprintf(buf, n, "`%s`", run_config_enum_name(k->path, *rc_cint_at(d, k))); break;
    case K_LABEL:
        if (*rc_cint_at(d, k) < 0) snprintf(buf, n, "`auto`");
        else snprintf(buf, n, "%d", *rc_cint_at(d, k));
        break;
    case K_STR: snprintf(buf, n, "`%s`", rc_cstr_at(d, k)); break;
    case K_NAMES: {
        size_t used = (size_t)snprintf(buf, n, "`[");
        for (int i = 0; i < d->quant.n_fp_names && used < n; i++)
            used += (size_t)snprintf(buf + used, n - used, "%s%s", i ? ", " : "", d->quant.fp_name_contains[i]);
        if (used < n) snprintf(buf + used, n - used, "]`");
        break;
    }
    case K_OVERRIDES: snprintf(buf, n, "`[]`"); break;  // none by default (an assert in test_run_config)
    case K_DOUBLE: {
        char t[64], *x;
        cfg_format_double(*rc_cdbl_at(d, k), t, sizeof t);
        if ((x = strstr(t, "e-0")) || (x = strstr(t, "e+0"))) memmove(x + 2, x + 3, strlen(x + 3) + 1);  // 1e-6
        snprintf(buf, n, "%s", t);
        break;
    }
    default: rc_value_text(d, k, buf, n);
    }
}

// Length of the group part of a key path ("train.optimizer" of "train.optimizer.lr_act").
static size_t group_len(const char *path) { return (size_t)(strrchr(path, '.') - path); }

void run_config_keys_markdown(FILE *f) {
    RunConfig d[RC_RECIPE_COUNT];
    for (int r = 0; r < RC_RECIPE_COUNT; r++) run_config_defaults(&d[r], (RcRecipe)r);
    for (int i = 0; i < RC_N_KEYS;) {
        const char *group = RC_KEYS[i].path;
        size_t glen = group_len(group);
        int end = i;  // rows of one group are contiguous
        int has_r = 0;
        char a[256], b[256];
        while (end < RC_N_KEYS && group_len(RC_KEYS[end].path) == glen && !strncmp(RC_KEYS[end].path, group, glen)) {
            default_text(&d[0], &RC_KEYS[end], a, sizeof a);
            default_text(&d[1], &RC_KEYS[end], b, sizeof b);
            has_r |= strcmp(a, b) != 0;
            end++;
        }
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)glen, group);
        fprintf(f, "%s### %s%s\n\n", i ? "\n" : "", name, group_note(name));
        fprintf(f, "| key | default%s | meaning |\n| --- | --- | --- |\n", has_r ? " (reference / effdm)" : "");
        for (; i < end; i++) {
            const KeyDesc *k = &RC_KEYS[i];
            default_text(&d[0], k, a, sizeof a);
            default_text(&d[1], k, b, sizeof b);
            int r = strcmp(a, b) != 0;
            fprintf(f, "| `%s`%s%s | ", k->path, r && !k->ddoc ? " R" : "", k->resume ? " \\*" : "");
            if (k->ddoc) fputs(k->ddoc, f);
            else if (r) fprintf(f, "%s / %s", a, b);
            else fputs(a, f);
            fprintf(f, " | %s |\n", k->doc ? k->doc : "");
        }
    }
}
