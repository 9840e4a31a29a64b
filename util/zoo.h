/* zoo.h: where the shipped teacher (models/zoo/fmnist-ldm: config, checkpoint, judge, test-set
   statistics) is found, from any working directory, build tree or installation. */
#ifndef EFFDM_ZOO_H
#define EFFDM_ZOO_H

#include <stddef.h>

#include "util/err.h"

// Path of `name` in the shipped teacher's folder: $EFFDM_ZOO/fmnist-ldm/name when EFFDM_ZOO is
// set, else the first existing of <effdm's directory>/../models/zoo, <effdm's
// directory>/../share/effdm/zoo, the source tree's models/zoo and the install prefix's
// share/effdm/zoo (+ /fmnist-ldm/name). 0, or ERR_IO when the file is not there (the message
// says where it looked and how to point elsewhere).
int zoo_path(const char *name, char *out, size_t cap, Err *e);

#endif
