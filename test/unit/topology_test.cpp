#define BOOST_TEST_MODULE topology
#include <boost/test/unit_test.hpp>

#include "pcx/topology.hpp"

BOOST_AUTO_TEST_CASE(placeholder) { BOOST_TEST(pcx::Topology(pcx::ParallelConfig{}).world_size() == 1); }
