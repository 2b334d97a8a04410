# The gRPC server (`vitrine serve`): protobuf-c code generated from proto/ into the build tree,
# the gRPC C core, protobuf-c and zlib (the metrics port is our own, serve/httpd.c), added to the
# existing targets vitrine_serve and vitrine. Included by the top-level CMakeLists.txt after those targets exist.
pkg_check_modules(GRPC REQUIRED IMPORTED_TARGET grpc)
pkg_check_modules(PROTOBUFC REQUIRED IMPORTED_TARGET libprotobuf-c)
# zlib: compressed requests are inflated by the server, bounded (serve/server.c inflate_payload)
pkg_check_modules(VT_ZLIB REQUIRED IMPORTED_TARGET zlib)
find_program(PROTOC_C protoc-c REQUIRED)
find_package(Threads REQUIRED)

# grpc.health.v1 comes from Debian's grpc-proto package
find_path(VITRINE_GRPC_PROTO_DIR grpc/health/v1/health.proto
          PATHS /usr/share/grpc-proto /usr/include /usr/local/share/grpc-proto REQUIRED)

set(VITRINE_PROTO_DIR ${CMAKE_SOURCE_DIR}/proto)
set(VITRINE_GEN_DIR ${CMAKE_BINARY_DIR}/gen)
set(VITRINE_GEN_SRC
    ${VITRINE_GEN_DIR}/vitrine/v1/storefront.pb-c.c
    ${VITRINE_GEN_DIR}/grpc/health/v1/health.pb-c.c)
set(VITRINE_GEN_HDR
    ${VITRINE_GEN_DIR}/vitrine/v1/storefront.pb-c.h
    ${VITRINE_GEN_DIR}/grpc/health/v1/health.pb-c.h)
add_custom_command(
  OUTPUT ${VITRINE_GEN_SRC} ${VITRINE_GEN_HDR}
  COMMAND ${CMAKE_COMMAND} -E make_directory ${VITRINE_GEN_DIR}
  COMMAND ${PROTOC_C} -I${VITRINE_PROTO_DIR} -I${VITRINE_GRPC_PROTO_DIR}
          --c_out=${VITRINE_GEN_DIR} vitrine/v1/storefront.proto grpc/health/v1/health.proto
  DEPENDS ${VITRINE_PROTO_DIR}/vitrine/v1/storefront.proto
          ${VITRINE_GRPC_PROTO_DIR}/grpc/health/v1/health.proto
  COMMENT "protoc-c: proto/vitrine/v1/storefront.proto, grpc/health/v1/health.proto"
  VERBATIM)
# generated code is not ours to keep warning-free
set_source_files_properties(${VITRINE_GEN_SRC} PROPERTIES GENERATED TRUE
                            COMPILE_OPTIONS "-Wno-error;-Wno-unused-parameter")

target_sources(vitrine_serve PRIVATE ${VITRINE_GEN_SRC})
target_include_directories(vitrine_serve PUBLIC ${VITRINE_GEN_DIR})
target_link_libraries(vitrine_serve PUBLIC PkgConfig::GRPC PkgConfig::PROTOBUFC PkgConfig::VT_ZLIB
                      Threads::Threads)

# `make test`: the server tests (Python grpcio from Debian) against a real `vitrine serve`
add_test(NAME server
         COMMAND /usr/bin/python3 -m pytest -q -rs -p no:cacheprovider tests/server
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set(VITRINE_SERVER_TEST_ENV "VT_BUILD=${CMAKE_BINARY_DIR};VT_FIXTURE=${CMAKE_BINARY_DIR}/fixture")
set(VITRINE_SERVER_TEST_TIMEOUT 300)
if(VITRINE_SANITIZE)
  # the binaries are ASan + UBSan (`make check-asan`): any error stops the process with its report
  # on stderr, which tests/server/conftest.py fails the test on; leaks are reported at exit. Python
  # runs as usual (nothing is preloaded: only the vitrine binaries link the runtime). VT_SANITIZED
  # skips the valgrind test and lengthens the start-up waits.
  list(APPEND VITRINE_SERVER_TEST_ENV
       "VT_SANITIZED=1"
       "ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1:log_path=stderr"
       "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")
  set(VITRINE_SERVER_TEST_TIMEOUT 900)
endif()
set_tests_properties(server PROPERTIES FIXTURES_REQUIRED fixture
                     TIMEOUT ${VITRINE_SERVER_TEST_TIMEOUT}
                     ENVIRONMENT "${VITRINE_SERVER_TEST_ENV}")
