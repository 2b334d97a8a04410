# tests/fuzz/: the parsers' fuzz targets (tests/fuzz/README.md). Every build compiles each target
# with tests/fuzz/replay.c as fuzz_<target>_replay, and `make test` replays the committed corpus
# and regressions through it (the ASan build of `make check-asan` too). With VITRINE_FUZZ=ON
# (clang; `make fuzz`) each is also linked with libFuzzer as fuzz_<target>.
set(VITRINE_FUZZ_TARGETS request wire safetensors bundle catalog rules)
foreach(t ${VITRINE_FUZZ_TARGETS})
  set(src ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_${t}.c ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz.c)
  # the engine's parsers link the engine alone: a call from engine/ up into serve/ fails here
  if(t STREQUAL "wire")
    set(libs vitrine_serve vitrine_engine)
  else()
    set(libs vitrine_engine)
  endif()
  add_executable(fuzz_${t}_replay ${src} ${CMAKE_SOURCE_DIR}/tests/fuzz/replay.c)
  target_link_libraries(fuzz_${t}_replay PRIVATE ${libs} ${VITRINE_CUDA_IMPL})
  target_compile_definitions(fuzz_${t}_replay PRIVATE
                             VT_FUZZ_DEFAULT_FIXTURE="${CMAKE_BINARY_DIR}/fixture")
  add_test(NAME fuzz_${t}
           COMMAND fuzz_${t}_replay tests/fuzz/corpus/${t} tests/fuzz/regressions/${t}
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(fuzz_${t} PROPERTIES FIXTURES_REQUIRED fixture TIMEOUT 120
                       ENVIRONMENT "VT_FIXTURE=${CMAKE_BINARY_DIR}/fixture")
  if(VITRINE_FUZZ)
    add_executable(fuzz_${t} ${src})
    target_link_libraries(fuzz_${t} PRIVATE ${libs} ${VITRINE_CUDA_IMPL})
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
    target_compile_definitions(fuzz_${t} PRIVATE
                               VT_FUZZ_DEFAULT_FIXTURE="${CMAKE_BINARY_DIR}/fixture")
  endif()
endforeach()
