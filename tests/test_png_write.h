/* test_png_write.h: stb_image_write for tests that make PNG inputs independently of effdm's
   own writer (io/image.h). Include once per test executable: it holds the implementation,
   static to that file. */
#ifndef EFFDM_TEST_PNG_WRITE_H
#define EFFDM_TEST_PNG_WRITE_H

#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

#endif
