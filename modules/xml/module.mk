# brisk.xml: libexpat for the stream parser.
LIBS_xml = -lexpat
