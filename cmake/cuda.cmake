# The CUDA side of the backends, as one static library that every executable links besides
# vitrine_engine; VITRINE_CUDA_IMPL names it:
#   vitrine_cuda    kernels/cuda/*.cu behind kernels/ops_cuda.h, the CUDA backend table
#                   (kernels/cuda/backend_cuda.c) and the registry (kernels/backend.c), with
#                   VITRINE_HAVE_CUDA=1;
#   vitrine_nocuda  when CUDA is not built: the registry and kernels/nocuda.c ("built without
#                   CUDA").
# (The tests' emulator build of the same sources, vitrine_cuda_emu, is cmake/cuda_emu.cmake's.)
#
# VITRINE_CUDA=AUTO (default): build it when an nvcc is found (CUDACXX, PATH, or
#   /usr/local/cuda/bin), else say so and build the CPU engine only;
# VITRINE_CUDA=ON: an nvcc is required; VITRINE_CUDA=OFF: never.
# No GPU is needed to build: the arches are fixed (sm_80 and sm_90 SASS plus sm_90 PTX for newer
# GPUs); the tests skip themselves at run time when no device answers.
# Included by the top-level CMakeLists.txt right after the vitrine_kernels target is defined.

set(VITRINE_CUDA AUTO CACHE STRING "Build the CUDA backend: AUTO (if nvcc is found), ON or OFF")
set_property(CACHE VITRINE_CUDA PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${VITRINE_CUDA}" _vt_cuda_mode)
if(NOT _vt_cuda_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "VITRINE_CUDA must be AUTO, ON or OFF, not '${VITRINE_CUDA}'")
endif()

set(VITRINE_HAVE_CUDA OFF)
if(_vt_cuda_mode STREQUAL "OFF")
  message(STATUS "vitrine: CUDA backend off (VITRINE_CUDA=OFF)")
else()
  if(NOT CMAKE_CUDA_COMPILER)
    find_program(VITRINE_NVCC nvcc HINTS ENV CUDACXX PATHS /usr/local/cuda/bin NO_CACHE)
    if(DEFINED ENV{CUDACXX} AND EXISTS "$ENV{CUDACXX}")
      set(VITRINE_NVCC "$ENV{CUDACXX}")
    endif()
    if(VITRINE_NVCC)
      set(CMAKE_CUDA_COMPILER "${VITRINE_NVCC}" CACHE FILEPATH "The CUDA compiler" FORCE)
    endif()
  endif()
  if(CMAKE_CUDA_COMPILER)
    set(VITRINE_HAVE_CUDA ON)
  elseif(_vt_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "VITRINE_CUDA=ON but no nvcc was found (set CUDACXX or put nvcc on PATH)")
  else()
    message(STATUS "vitrine: no nvcc found, skipping the CUDA backend (VITRINE_CUDA=AUTO)")
  endif()
endif()

if(VITRINE_HAVE_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES "80-real;90-real;90-virtual")
  endif()
  # one CUDA runtime for everything: the shared libcudart that CUDA::cudart names
  set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "vitrine: CUDA backend on (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, "
                 "arches ${CMAKE_CUDA_ARCHITECTURES})")

  # the kernels (*.cu), the backend table over them (*.c, plain C) and the registry
  file(GLOB VITRINE_CUDA_SRC CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/kernels/cuda/*.cu
       ${CMAKE_SOURCE_DIR}/kernels/cuda/*.c)
  add_library(vitrine_cuda STATIC ${VITRINE_CUDA_SRC} ${CMAKE_SOURCE_DIR}/kernels/backend.c)
  # the directory's C warning and sanitizer flags (-Wstrict-prototypes, -fsanitize=...) are not
  # nvcc's: the CUDA sources get the host compiler's warnings through -Xcompiler
  set_property(TARGET vitrine_cuda PROPERTY COMPILE_OPTIONS "")
  target_compile_options(vitrine_cuda PRIVATE
                         $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wshadow>
                         $<$<COMPILE_LANGUAGE:C>:-Wall -Wextra -Wshadow -Wstrict-prototypes>)
  if(VITRINE_WERROR)
    target_compile_options(vitrine_cuda PRIVATE
                           $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>
                           $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Werror>
                           $<$<COMPILE_LANGUAGE:C>:-Werror>)
  endif()
  if(VITRINE_SANITIZE)
    target_compile_options(vitrine_cuda PRIVATE
                           $<$<COMPILE_LANGUAGE:C>:-fsanitize=address,undefined -fno-omit-frame-pointer>)
  endif()
  set_target_properties(vitrine_cuda PROPERTIES CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON
                                                POSITION_INDEPENDENT_CODE ON)
  target_include_directories(vitrine_cuda PUBLIC ${CMAKE_SOURCE_DIR})
  target_compile_definitions(vitrine_cuda PUBLIC VITRINE_HAVE_CUDA=1)
  target_link_libraries(vitrine_cuda PUBLIC vitrine_kernels CUDA::cudart CUDA::cublas
                        ${CMAKE_DL_LIBS})
  set(VITRINE_CUDA_IMPL vitrine_cuda)
endif()
unset(_vt_cuda_mode)
if(NOT VITRINE_HAVE_CUDA)
  # the CUDA entry points of kernels/backend.h answer "built without CUDA"
  add_library(vitrine_nocuda STATIC ${CMAKE_SOURCE_DIR}/kernels/nocuda.c
                                    ${CMAKE_SOURCE_DIR}/kernels/backend.c)
  target_link_libraries(vitrine_nocuda PUBLIC vitrine_kernels)
  set(VITRINE_CUDA_IMPL vitrine_nocuda)
endif()

if(VITRINE_HAVE_CUDA)
  # `make test`: the GPU pack (tests/gpu/pack.py, `make gpu-pack`) made from this build's CUDA
  # binaries is complete and small enough, and its check catches what it is for
  add_test(NAME gpu_pack
           COMMAND /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/gpu/test_pack.py
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(gpu_pack PROPERTIES FIXTURES_REQUIRED fixture TIMEOUT 600
                       ENVIRONMENT "VT_BUILD=${CMAKE_BINARY_DIR};VT_FIXTURE=${CMAKE_BINARY_DIR}/fixture")
endif()
