# vitrine-bench: the gRPC load generator and latency profiler (bench/loadgen/, C11 on the gRPC C
# core client API), and its tests. Included by the top-level CMakeLists.txt after server.cmake:
# it links vitrine_serve for the generated vitrine/v1/storefront.pb-c code, gRPC, protobuf-c and
# cJSON (the linker takes only the objects it uses from the static library).
file(GLOB VITRINE_LOADGEN_SRC CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/bench/loadgen/*.c)
add_executable(vitrine-bench ${VITRINE_LOADGEN_SRC})
target_link_libraries(vitrine-bench PRIVATE vitrine_serve PkgConfig::GRPC PkgConfig::PROTOBUFC
                      PkgConfig::CJSON Threads::Threads m)

# `make test`: the tool against a stub server with known answers, a real `vitrine serve` on the
# fixture bundle, bad request files and the plots (tests/bench, pytest + Debian's grpcio)
add_test(NAME bench_tool
         COMMAND /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/bench
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(bench_tool PROPERTIES FIXTURES_REQUIRED fixture TIMEOUT 300
                     ENVIRONMENT "VT_BUILD=${CMAKE_BINARY_DIR};VT_FIXTURE=${CMAKE_BINARY_DIR}/fixture")
